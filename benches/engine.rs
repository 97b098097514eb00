//! Criterion: sustained insert throughput at the 10K scale, variants compared in one run:
//! the in-memory engine vs the durable clusterer (sled + snapshots), at 128-D and 512-D.
//! The 100K and 1M figures come from `clip-cluster bench` (minutes per run; see BENCHMARKS.md).

use std::hint::black_box;

use clip_cluster::clusterer::Clusterer;
use clip_cluster::config::Config;
use clip_cluster::engine::{Engine, Face};
use clip_cluster::eval::synth::{generate, SynthParams};
use clip_cluster::index::HnswIndex;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const PREFILL: usize = 10_000;
const BATCH: usize = 500;
const SAMPLES: usize = 10;

fn config(dim: usize, path: &std::path::Path) -> Config {
    let env = vec![
        ("CLIP_CLUSTER__MODEL__DIM".to_string(), dim.to_string()),
        (
            "CLIP_CLUSTER__STORE__PATH".to_string(),
            path.display().to_string(),
        ),
    ];
    Config::load_from(None, &env).expect("default configuration loads")
}

fn bench_insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("insert_after_10k");
    g.sample_size(SAMPLES);
    g.throughput(Throughput::Elements(BATCH as u64));
    for dim in [128usize, 512] {
        // Enough faces for the prefill and every batch criterion may run (warm-up included).
        let total = PREFILL + BATCH * 400;
        let data = generate(SynthParams::new(total, dim, 5)).data;
        let ids: Vec<String> = (0..total).map(|i| format!("b{i}")).collect();
        let faces = |a: usize, b: usize| -> Vec<(&str, &[f32])> {
            (a..b)
                .map(|i| (ids[i].as_str(), &data[i * dim..(i + 1) * dim]))
                .collect()
        };
        // The durable path takes owned faces, made outside the timed closure.
        let owned = |a: usize, b: usize| -> Vec<Face> {
            faces(a, b)
                .into_iter()
                .map(|(id, v)| Face::new(id, v.to_vec()))
                .collect()
        };

        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config(dim, &dir.path().join("state"));
        let mut engine = Engine::new(cfg.engine_params(), HnswIndex::new(cfg.hnsw_params()));
        engine.set_tracking(false);
        for (id, v) in faces(0, PREFILL) {
            engine.insert(id, v).expect("valid face");
        }
        let mut next = PREFILL;
        g.bench_function(format!("engine_in_memory/{dim}d"), |b| {
            b.iter_batched(
                || {
                    let a = next.min(total - BATCH);
                    next += BATCH;
                    a
                },
                |a| {
                    for (id, v) in faces(a, a + BATCH) {
                        black_box(engine.insert(id, v).expect("valid face"));
                    }
                },
                BatchSize::PerIteration,
            )
        });

        let mut durable = Clusterer::open(&cfg).expect("fresh state");
        durable.apply(&owned(0, PREFILL), &[]).expect("prefill");
        let mut next = PREFILL;
        g.bench_function(format!("durable_sled/{dim}d"), |b| {
            b.iter_batched(
                || {
                    let a = next.min(total - BATCH);
                    next += BATCH;
                    owned(a, a + BATCH)
                },
                |batch| black_box(durable.apply(&batch, &[]).expect("apply")),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_insert);
criterion_main!(benches);
