//! Hot decode paths: SFLOAT/FLOAT decoding and decimal rendering, measured against a plain
//! integer-to-string baseline so the ratio survives a noisy machine.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vitalgate_drivers::ieee11073::{decode_float, decode_sfloat};

fn codecs(c: &mut Criterion) {
    let raws: Vec<u16> = (0..4096u32).map(|i| (i * 16 + 3) as u16).collect();
    let mut g = c.benchmark_group("ieee11073");
    g.bench_function("baseline_i64_to_string_x4096", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for r in &raws {
                n += black_box(i64::from(*r)).to_string().len();
            }
            n
        })
    });
    g.bench_function("sfloat_decode_and_render_x4096", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for r in &raws {
                n += decode_sfloat(black_box(*r)).to_string().len();
            }
            n
        })
    });
    g.bench_function("float_decode_x4096", |b| {
        b.iter(|| {
            let mut n = 0i64;
            for r in &raws {
                if let Some(d) =
                    decode_float(black_box(u32::from(*r) << 8 | 0xFE00_0000)).as_decimal()
                {
                    n += d.mantissa;
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
