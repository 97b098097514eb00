//! CPU throughput of the dlib ResNet (candle, f32) at a few batch sizes, on a seeded synthetic chip.
//! Needs the model (`tools/dlib/fetch_models.sh`); skips with a message when it is missing.
//! Run: `cargo bench --bench embed`. Results: BENCHMARKS.md.

use std::path::PathBuf;

use candle_core::{DType, Device};
use clip_cluster::embed::network::{DlibResNet, CHIP};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dir = std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let path = dir.join("dlib_face_recognition_resnet_model_v1.dat");
    if !path.is_file() {
        eprintln!(
            "SKIP: {} missing (run tools/dlib/fetch_models.sh)",
            path.display()
        );
        return;
    }
    let net = DlibResNet::load(&path, &Device::Cpu, DType::F32).expect("model loads");
    let chip: Vec<u8> = (0..CHIP * CHIP * 3)
        .map(|i| ((i * 2654435761usize) >> 13) as u8)
        .collect();
    let mut g = c.benchmark_group("dlib_resnet_cpu_f32");
    g.sample_size(10);
    for batch in [1usize, 8, 32] {
        let chips: Vec<&[u8]> = (0..batch).map(|_| chip.as_slice()).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &chips, |b, chips| {
            b.iter(|| net.embed_chips(chips).expect("forward"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
