//! The agent's own cost per Observation on the delivery path: mapping stored readings to a
//! transaction Bundle (Observations, Devices, Patient, coincident timestamp) and serialising
//! it, for one batch of the default size, against the same readings one Bundle each (what
//! `batch_max = 1` costs the agent; the network round trips come on top of it).
//!
//! `cargo bench -p vitalgate --bench fhir_mapping`. `scripts/bench-fhir` measures delivery end
//! to end against the local FHIR server.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;
use vitalgate::fhir::{GatewayInfo, GatewayTime, MapItem, PatientRef, assemble};
use vitalgate_drivers::Receipt;
use vitalgate_hardware::sim::BpCuffMemory;

const BATCH: usize = 100;

fn bench(c: &mut Criterion) {
    let receipt = Receipt {
        wall_ms: 1_800_000_000_000,
        monotonic_ns: 1,
        boot_id: Uuid::nil(),
        clock_synchronized: true,
    };
    let cuff = BpCuffMemory::new("00:1C:05:FF:E8:74", BATCH as u32);
    let readings: Vec<_> = (0..BATCH as u32).map(|i| cuff.record(i, receipt)).collect();
    let patient: PatientRef = "https://hospital.example/mrn|12345"
        .parse()
        .expect("patient");
    let keys: Vec<String> = readings.iter().map(|r| r.dedup_key()).collect();
    let items: Vec<MapItem<'_>> = readings
        .iter()
        .zip(&keys)
        .map(|(reading, key)| MapItem {
            reading,
            patient: &patient,
            stored_key: Some(key),
        })
        .collect();
    let gw = GatewayInfo {
        id: "bench-gw".into(),
        version: "0".into(),
        namespace: Default::default(),
        system_id: None,
    };
    let time = GatewayTime {
        now: receipt,
        utc_offset_s: 0,
    };
    let mut g = c.benchmark_group("fhir_mapping");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("one transaction of 100", |b| {
        b.iter(|| {
            let a = assemble(&gw, &time, &items);
            serde_json::to_vec(&a.transaction())
                .expect("serialise")
                .len()
        })
    });
    g.bench_function("100 transactions of 1", |b| {
        b.iter(|| {
            items
                .iter()
                .map(|i| {
                    let a = assemble(&gw, &time, std::slice::from_ref(i));
                    serde_json::to_vec(&a.transaction())
                        .expect("serialise")
                        .len()
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
