//! Serial framer throughput in MB/s: each framer over a long stream of valid frames (with a
//! little garbage and a bad checksum every so often, as a real link has), fed in 64-byte
//! reads as a tty delivers them. Beside each, a baseline in the same run (summing the same
//! bytes), so the ratio survives a noisy machine. Throughput is reported in bytes.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vitalgate_drivers::serial::{astm, contec, nonin, taidoc};

/// About 256 KiB of device bytes built by repeating `unit`, with 3 garbage bytes and one
/// corrupted copy every 50 units.
fn stream(unit: &[u8], corrupt_at: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(260_000);
    let mut i = 0usize;
    while out.len() < 256 * 1024 {
        if i % 50 == 49 {
            out.extend_from_slice(&[0xEE, 0x13, 0x37]);
            let mut bad = unit.to_vec();
            let at = corrupt_at.min(bad.len() - 1);
            bad[at] ^= 0x01;
            out.extend_from_slice(&bad);
        } else {
            out.extend_from_slice(unit);
        }
        i += 1;
    }
    out
}

fn streams() -> Vec<(&'static str, Vec<u8>)> {
    let taidoc = [
        taidoc::Frame::response(0x25, [0x6F, 0x30, 0x1E, 0x08]).encode(),
        taidoc::Frame::response(0x26, [0x80, 0x60, 0x50, 0x48]).encode(),
    ]
    .concat();
    let mut df2 = Vec::new();
    let mut df7 = Vec::new();
    for i in 0..25u8 {
        let f = nonin::Frame {
            status: 0x80 | u8::from(i == 0),
            pleth: 0x40,
            data: [0, 72, 97, 48][usize::from(i.min(3))],
        };
        df2.extend_from_slice(&f.encode(nonin::Format::Df2));
        df7.extend_from_slice(&f.encode(nonin::Format::Df7));
    }
    let contec = [
        contec::Packet::encode(0x01, &[5, 0x33, 0x16, 65, 97, 0xFF, 0xFF]),
        contec::Packet::encode(0x0F, &[97, 70, 97, 71, 96, 72]),
    ]
    .concat();
    let records = vec![
        "R|1|^^^Glucose|93|mg/dL^P||A/M0/T1||201505261150".to_owned(),
        "R|2|^^^Glucose|5.4|mmol/L^W||B||201505261230".to_owned(),
    ];
    let astm: Vec<u8> = astm::frames_for(&records, 1, 240)
        .iter()
        .flat_map(|f| f.encode())
        .collect();
    vec![
        ("taidoc", stream(&taidoc, 7)),
        ("nonin_df2", stream(&df2, 4)),
        ("nonin_df7", stream(&df7, 4)),
        ("nonin_ascii", stream(b"12:00:01 SPO2=097 HR=072\r\n", 14)),
        ("contec", stream(&contec, 5)),
        ("astm", stream(&astm, 20)),
    ]
}

/// Frames (and errors) counted by running the protocol's framer over `bytes`.
fn frame(name: &str, bytes: &[u8]) -> usize {
    let mut n = 0usize;
    macro_rules! drain {
        ($f:expr) => {{
            let mut f = $f;
            for chunk in bytes.chunks(64) {
                f.push(chunk);
                while let Some(item) = f.next() {
                    n += usize::from(item.is_ok());
                }
            }
        }};
    }
    match name {
        "taidoc" => drain!(taidoc::Framer::new(taidoc::DEVICE)),
        "nonin_df2" => drain!(nonin::Framer::new(nonin::Format::Df2)),
        "nonin_df7" => drain!(nonin::Framer::new(nonin::Format::Df7)),
        "nonin_ascii" => drain!(nonin::AsciiFramer::default()),
        "contec" => drain!(contec::Framer::default()),
        "astm" => drain!(astm::Framer::default()),
        _ => unreachable!(),
    }
    n
}

fn serial(c: &mut Criterion) {
    let mut g = c.benchmark_group("serial_framer");
    g.sample_size(20);
    for (name, bytes) in streams() {
        assert!(frame(name, &bytes) > 1000, "{name}: the stream frames");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("{name}/baseline_byte_sum"), |b| {
            b.iter(|| {
                black_box(&bytes)
                    .iter()
                    .fold(0u32, |a, x| a.wrapping_add(u32::from(*x)))
            })
        });
        g.bench_function(format!("{name}/frame"), |b| {
            b.iter(|| frame(name, black_box(&bytes)))
        });
    }
    g.finish();
}

criterion_group!(benches, serial);
criterion_main!(benches);
