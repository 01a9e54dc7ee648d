//! BLE characteristic decode throughput, one benchmark per characteristic, each beside a
//! baseline measured in the same run (summing the same bytes as little-endian u16 words), so
//! the ratio survives a noisy machine. Throughput is reported as elements (= measurements
//! decoded) per second.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vitalgate_drivers::ble::{DecodeContext, decode, uuid};

/// The reference vectors of drivers/docs/test-vectors.md (and a PLX spot-check and DIS value).
const CASES: &[(&str, u16, &[u8])] = &[
    (
        "2A35_bp_full",
        uuid::BLOOD_PRESSURE_MEASUREMENT,
        &[
            0x1E, 0x8A, 0x00, 0x58, 0x00, 0x78, 0x00, 0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B,
            0x3C, 0x00, 0x01, 0x27, 0x00,
        ],
    ),
    (
        "2A1C_temperature",
        uuid::TEMPERATURE_MEASUREMENT,
        &[
            0x06, 0xB0, 0x0E, 0x00, 0xFE, 0xDC, 0x07, 0x0C, 0x05, 0x0B, 0x32, 0x1B, 0x04,
        ],
    ),
    ("2A9D_weight", uuid::WEIGHT_MEASUREMENT, &[0x00, 0x8C, 0x3C]),
    (
        "2A18_glucose",
        uuid::GLUCOSE_MEASUREMENT,
        &[
            0x1B, 0x01, 0x00, 0xE3, 0x07, 0x02, 0x1B, 0x0B, 0x0A, 0x1E, 0xFB, 0xFF, 0x1E, 0x00,
            0x12, 0x05, 0x01,
        ],
    ),
    (
        "2A52_racp",
        uuid::RECORD_ACCESS_CONTROL_POINT,
        &[0x06, 0x00, 0x01, 0x01],
    ),
    (
        "2A5F_plx_continuous",
        uuid::PLX_CONTINUOUS,
        &[0x00, 0xE8, 0xF3, 0x84, 0xF3],
    ),
    (
        "2A5E_plx_spot",
        uuid::PLX_SPOT_CHECK,
        &[
            0x1F, 0x61, 0x00, 0x48, 0x00, 0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00, 0x80, 0x00,
            0x00, 0x80, 0x00, 0x19, 0xF0,
        ],
    ),
    (
        "2A37_heart_rate",
        uuid::HEART_RATE_MEASUREMENT,
        &[0x1E, 0x55, 0x32, 0x00, 0x21, 0x00],
    ),
    (
        "2AA7_cgm_crc",
        uuid::CGM_MEASUREMENT,
        &[
            0x0F, 0xE3, 0xD2, 0xE4, 0x05, 0x00, 0x02, 0x14, 0xFF, 0x02, 0xF0, 0xE5, 0xF3, 0x8E,
            0x3F,
        ],
    ),
    (
        "2A2B_current_time",
        uuid::CURRENT_TIME,
        &[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00, 0x02, 0x00, 0x00],
    ),
    (
        "2A29_manufacturer",
        uuid::MANUFACTURER_NAME,
        b"Nonin_Medical_Inc.",
    ),
];

/// Values decoded per iteration, so per-value costs dominate the loop overhead.
const BATCH: u64 = 1024;

fn ble(c: &mut Criterion) {
    let ctx = DecodeContext::default();
    let mut g = c.benchmark_group("ble_decode");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH));
    for (name, characteristic, bytes) in CASES {
        g.bench_function(format!("{name}/baseline_u16_sum"), |b| {
            b.iter(|| {
                let mut n = 0u32;
                for _ in 0..BATCH {
                    for w in black_box(*bytes).chunks_exact(2) {
                        n = n.wrapping_add(u32::from(u16::from_le_bytes([w[0], w[1]])));
                    }
                }
                n
            })
        });
        g.bench_function(format!("{name}/decode"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for _ in 0..BATCH {
                    if decode(*characteristic, black_box(bytes), &ctx).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        });
        g.bench_function(format!("{name}/decode_to_measurements"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for _ in 0..BATCH {
                    if let Ok(d) = decode(*characteristic, black_box(bytes), &ctx) {
                        n += d.measurements().len();
                    }
                }
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ble);
criterion_main!(benches);
