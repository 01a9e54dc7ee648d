//! SFLOAT/FLOAT: any bytes decode without panicking, render as text that parses as a number,
//! and re-encode to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::ieee11073::{
    Value, decode_float_le, decode_sfloat_le, encode_float, encode_sfloat,
};

fuzz_target!(|data: &[u8]| {
    for chunk in data.chunks_exact(2) {
        let v = decode_sfloat_le([chunk[0], chunk[1]]);
        check_text(v);
        let back = encode_sfloat(v).expect("decoded SFLOAT re-encodes");
        assert_eq!(decode_sfloat_le(back.to_le_bytes()), v);
    }
    for chunk in data.chunks_exact(4) {
        let v = decode_float_le([chunk[0], chunk[1], chunk[2], chunk[3]]);
        check_text(v);
        let back = encode_float(v).expect("decoded FLOAT re-encodes");
        assert_eq!(decode_float_le(back.to_le_bytes()), v);
    }
});

fn check_text(v: Value) {
    if let Value::Number(d) = v {
        let text = d.to_string();
        assert!(text.parse::<f64>().is_ok(), "{text} is not a number");
    }
}
