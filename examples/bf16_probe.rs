//! How far the dlib ResNet's bf16 path is from f32 on the CPU (candle), on the two synthetic
//! fixture inputs: max |diff| and cosine per input. Run: `cargo run --release --example bf16_probe`.
use candle_core::{DType, Device};
use clip_cluster::embed::network::{DlibResNet, CHIP};

fn main() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/dlib_face_recognition_resnet_model_v1.dat");
    let chips: Vec<Vec<u8>> = (0..2)
        .map(|k| {
            let mut v = Vec::with_capacity(CHIP * CHIP * 3);
            for r in 0..CHIP {
                for c in 0..CHIP {
                    for ch in 0..3 {
                        v.push(if k == 0 {
                            ((3 * r + 5 * c + 80 * ch) % 256) as u8
                        } else {
                            ((r * c + 37 * ch * (r + 1)) % 256) as u8
                        });
                    }
                }
            }
            v
        })
        .collect();
    let refs: Vec<&[u8]> = chips.iter().map(Vec::as_slice).collect();
    let f32_net = DlibResNet::load(&path, &Device::Cpu, DType::F32)?;
    let a = f32_net.embed_chips(&refs)?;
    for dt in [DType::BF16, DType::F16] {
        let net = DlibResNet::load(&path, &Device::Cpu, dt)?;
        let t = std::time::Instant::now();
        let b = net.embed_chips(&refs)?;
        for (x, y) in a.iter().zip(&b) {
            let max = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let n = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
            println!(
                "{dt:?}: max |diff| {max:.2e}, cosine {:.6}",
                dot / (n(x) * n(y))
            );
        }
        println!("{dt:?}: {:.2} s for 2 chips", t.elapsed().as_secs_f64());
    }
    Ok(())
}
