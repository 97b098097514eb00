//! Prints the chip quality measures of images (one per line: path, brightness, contrast,
//! sharpness, score), to fit the ramps of src/quality.rs on training images:
//! `cargo run --release --example quality_probe -- <file with one image path per line>`.

use clip_cluster::config::Config;

fn main() -> anyhow::Result<()> {
    let list = std::env::args().nth(1).expect("a file listing image paths");
    let cfg = Config::load(None)?;
    let embedder = clip_cluster::embed::DlibEmbedder::from_config(&cfg)?;
    let prep = embedder.preprocessor();
    let params = clip_cluster::embed::quality::QualityParams::default();
    for path in std::fs::read_to_string(&list)?
        .lines()
        .filter(|l| !l.is_empty())
    {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        match prep.chip(&bytes) {
            Ok(chip) => {
                let q = clip_cluster::embed::quality::measure(
                    &chip,
                    clip_cluster::embed::network::CHIP,
                );
                println!(
                    "{path}\t{:.2}\t{:.2}\t{:.4}\t{:.3}",
                    q.brightness,
                    q.contrast,
                    q.sharpness,
                    q.score(&params)
                );
            }
            Err(e) => eprintln!("{path}: {e}"),
        }
    }
    Ok(())
}
