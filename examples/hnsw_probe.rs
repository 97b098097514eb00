//! Probe: hnsw_rs insert+search cost per face as the index grows, synthetic vs Gaussian data.
use clip_cluster::eval::synth::{generate, SynthParams};
use clip_cluster::index::{HnswIndex, HnswParams, NeighborIndex};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let kind = args.get(2).cloned().unwrap_or_else(|| "synth".into());
    let m: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    let ef: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(48);
    let dim = 128;
    let data: Vec<f32> = if kind.starts_with("synth") {
        generate(SynthParams::new(n, dim, 1)).data
    } else {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut d = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let v: Vec<f32> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            d.extend(v.iter().map(|x| x / norm));
        }
        d
    };
    let mut idx = HnswIndex::new(HnswParams {
        m,
        ef_construction: ef,
        ef_search: ef,
        capacity_hint: n,
    });
    let mut t = Instant::now();
    let step = n / 10;
    for i in 0..n {
        let v = &data[i * dim..(i + 1) * dim];
        if kind == "synth2" || kind == "gauss2" {
            std::hint::black_box(idx.search(v, 32));
            idx.insert(i as u32, v);
        } else {
            std::hint::black_box(idx.insert_and_search(i as u32, v, 32));
        }
        if (i + 1) % step == 0 {
            let s = t.elapsed().as_secs_f64();
            println!(
                "{kind} m={m} ef={ef} n={} faces/s={:.0}",
                i + 1,
                step as f64 / s
            );
            t = Instant::now();
        }
    }
}
