//! Labeled Faces in the Wild on disk: finding it, its list files (`pairs.txt`, `people*.txt`), and
//! the standard verification protocol (10 folds; the threshold is chosen on nine folds and tested
//! on the tenth). The data set is never copied into the repository; commands and tests find it by
//! flag, by `CLIP_CLUSTER_LFW`, or at `../shared/data/lfw`, and say where they looked when it is
//! missing.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Environment variable naming the LFW root (the directory holding `images/` and `pairs.txt`).
pub const ENV_LFW: &str = "CLIP_CLUSTER_LFW";

#[derive(Debug, Error)]
pub enum LfwError {
    #[error("LFW not found: looked in {looked}; pass --lfw DIR or set {ENV_LFW} to the directory holding images/ and pairs.txt")]
    NotFound { looked: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {detail}")]
    Parse {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

/// Finds the LFW root: the flag, else the environment, else `../shared/data/lfw` from the working
/// directory or from this crate's directory. A flag or variable that is given is the only place
/// looked at: a wrong path is an error, never a silent fall-back to another copy.
pub fn locate(flag: Option<&Path>) -> Result<PathBuf, LfwError> {
    let mut candidates = Vec::new();
    if let Some(f) = flag {
        candidates.push(f.to_path_buf());
    } else if let Some(e) = std::env::var_os(ENV_LFW) {
        candidates.push(PathBuf::from(e));
    } else {
        candidates.push(PathBuf::from("../shared/data/lfw"));
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/lfw"));
    }
    for c in &candidates {
        if c.join("images").is_dir() {
            return Ok(c.clone());
        }
    }
    Err(LfwError::NotFound {
        looked: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Path of image `n` (1-based) of `name`.
pub fn image_path(root: &Path, name: &str, n: usize) -> PathBuf {
    root.join("images")
        .join(name)
        .join(format!("{name}_{n:04}.jpg"))
}

/// One verification pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub a: (String, usize),
    pub b: (String, usize),
    pub same: bool,
    /// Fold index, 0-based.
    pub fold: usize,
}

fn read_lines(path: &Path) -> Result<Vec<String>, LfwError> {
    let text = std::fs::read_to_string(path).map_err(|source| LfwError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().map(str::to_string).collect())
}

fn parse_num(path: &Path, line: usize, s: &str) -> Result<usize, LfwError> {
    s.parse().map_err(|_| LfwError::Parse {
        path: path.to_path_buf(),
        line,
        detail: format!("'{s}' is not a number"),
    })
}

/// Reads `pairs.txt` (header "folds pairs_per_class", then per fold that many matched lines
/// "name n1 n2" followed by that many mismatched lines "name1 n1 name2 n2").
pub fn read_pairs(path: &Path) -> Result<(usize, Vec<Pair>), LfwError> {
    let lines = read_lines(path)?;
    let bad = |line: usize, detail: String| LfwError::Parse {
        path: path.to_path_buf(),
        line,
        detail,
    };
    let head: Vec<&str> = lines
        .first()
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let (folds, per) = match head.as_slice() {
        [f] => (1, parse_num(path, 1, f)?),
        [f, p] => (parse_num(path, 1, f)?, parse_num(path, 1, p)?),
        _ => return Err(bad(1, "expected 'folds pairs_per_class'".into())),
    };
    let mut pairs = Vec::with_capacity(folds * per * 2);
    for (i, l) in lines.iter().enumerate().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        let k = pairs.len();
        let fold = k / (2 * per).max(1);
        let pair = match f.as_slice() {
            [n, a, b] => Pair {
                a: (n.to_string(), parse_num(path, i + 1, a)?),
                b: (n.to_string(), parse_num(path, i + 1, b)?),
                same: true,
                fold,
            },
            [n1, a, n2, b] => Pair {
                a: (n1.to_string(), parse_num(path, i + 1, a)?),
                b: (n2.to_string(), parse_num(path, i + 1, b)?),
                same: false,
                fold,
            },
            _ => {
                return Err(bad(
                    i + 1,
                    format!("expected 3 or 4 fields, got {}", f.len()),
                ))
            }
        };
        let want_same = (k % (2 * per)) < per;
        if pair.same != want_same {
            return Err(bad(
                i + 1,
                "matched and mismatched pairs out of the expected order".into(),
            ));
        }
        pairs.push(pair);
    }
    if pairs.len() != folds * per * 2 {
        return Err(bad(
            lines.len(),
            format!("{} pairs, header promises {}", pairs.len(), folds * per * 2),
        ));
    }
    Ok((folds, pairs))
}

/// Reads a people list (`people.txt`, `peopleDevTrain.txt`, `peopleDevTest.txt`): lines "name count";
/// lines with a single number (counts of the following block) are skipped.
pub fn read_people(path: &Path) -> Result<Vec<(String, usize)>, LfwError> {
    let mut out = Vec::new();
    for (i, l) in read_lines(path)?.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [] | [_] => {}
            [name, n] => out.push((name.to_string(), parse_num(path, i + 1, n)?)),
            _ => {
                return Err(LfwError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    detail: "expected 'name count'".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Accuracy of the protocol.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verification {
    pub mean_accuracy: f64,
    pub std_accuracy: f64,
    /// Per fold: (threshold chosen on the other folds, accuracy on this fold).
    pub folds: Vec<(f64, f64)>,
}

/// The best threshold on `(distance, same)` items: pairs at distance <= t are called "same".
/// Returns (threshold, accuracy). Ties keep the smallest threshold.
pub fn best_threshold(items: &[(f64, bool)]) -> (f64, f64) {
    let mut v: Vec<(f64, bool)> = items.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = v.len().max(1) as f64;
    // Threshold below everything: all "different"; correct = number of different pairs.
    let mut correct = v.iter().filter(|x| !x.1).count() as i64;
    let mut best = (v.first().map(|x| x.0 - 1e-9).unwrap_or(0.0), correct);
    for i in 0..v.len() {
        correct += if v[i].1 { 1 } else { -1 };
        // Only cut between distinct distances.
        if i + 1 < v.len() && v[i + 1].0 == v[i].0 {
            continue;
        }
        let t = if i + 1 < v.len() {
            0.5 * (v[i].0 + v[i + 1].0)
        } else {
            v[i].0
        };
        if correct > best.1 {
            best = (t, correct);
        }
    }
    (best.0, best.1 as f64 / n)
}

/// Runs the k-fold protocol over per-pair distances.
pub fn k_fold(distances: &[f64], pairs: &[Pair], folds: usize) -> Verification {
    let mut per_fold = Vec::with_capacity(folds);
    for f in 0..folds {
        let train: Vec<(f64, bool)> = pairs
            .iter()
            .zip(distances)
            .filter(|(p, _)| p.fold != f)
            .map(|(p, d)| (*d, p.same))
            .collect();
        let (t, _) = best_threshold(&train);
        let test: Vec<(f64, bool)> = pairs
            .iter()
            .zip(distances)
            .filter(|(p, _)| p.fold == f)
            .map(|(p, d)| (*d, p.same))
            .collect();
        let correct = test.iter().filter(|(d, s)| (*d <= t) == *s).count();
        per_fold.push((t, correct as f64 / test.len().max(1) as f64));
    }
    let n = per_fold.len().max(1) as f64;
    let mean = per_fold.iter().map(|x| x.1).sum::<f64>() / n;
    let var = per_fold.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / n;
    Verification {
        mean_accuracy: mean,
        std_accuracy: var.sqrt(),
        folds: per_fold,
    }
}

/// What `clip-cluster verify` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub model_id: String,
    pub n_pairs: usize,
    pub n_images: usize,
    /// Images that failed to embed, by class; their pairs count as "different".
    pub rejected: std::collections::BTreeMap<String, usize>,
    pub mean_accuracy: f64,
    pub std_accuracy: f64,
    /// Per fold: (Euclidean threshold chosen on the other folds, accuracy on this fold).
    pub folds: Vec<(f64, f64)>,
    pub mean_same_distance: f64,
    pub mean_different_distance: f64,
    /// The same protocol on the distance between L2-normalized vectors (the cosine geometry the
    /// clustering uses).
    pub normalized_mean_accuracy: f64,
    pub normalized_std_accuracy: f64,
    /// Embedding time of the unique images (decode, chip, network).
    pub seconds: f64,
    pub faces_per_second: f64,
}

/// The standard protocol on `root/pairs.txt`: embeds every image the pairs name once, takes the
/// Euclidean distance of the raw vectors (dlib's convention), and runs the 10 folds. With
/// `first_folds = Some(k)` (2..=10), only the pairs of the first k folds, the threshold of each
/// chosen on the other k - 1: for slow variants, compared with the standard images at the same k.
pub fn verify(
    root: &Path,
    embedder: &dyn crate::embed::FaceEmbedder,
    chunk: usize,
    first_folds: Option<usize>,
    progress: &dyn Fn(usize, usize),
) -> Result<VerifyReport, crate::eval::dataset::DatasetError> {
    use crate::eval::dataset::{DatasetError, LabeledImage};
    let pairs_path = root.join("pairs.txt");
    let (mut folds, mut pairs) =
        read_pairs(&pairs_path).map_err(|e| DatasetError::Model(e.to_string()))?;
    if let Some(k) = first_folds {
        if !(2..=folds).contains(&k) {
            return Err(DatasetError::Model(format!(
                "--folds {k}: want 2..={folds} (pairs.txt has {folds} folds)"
            )));
        }
        pairs.retain(|p| p.fold < k);
        folds = k;
    }
    let unique = pair_images(&pairs);
    let images: Vec<LabeledImage> = unique
        .iter()
        .map(|(n, i)| LabeledImage {
            path: image_path(root, n, *i),
            identity: n.clone(),
        })
        .collect();
    let emb = crate::eval::dataset::embed(embedder, &images, chunk, progress)?;
    let row_of: std::collections::HashMap<&Path, usize> = emb
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_path(), i))
        .collect();
    let vec_of = |k: &(String, usize)| {
        row_of
            .get(image_path(root, &k.0, k.1).as_path())
            .map(|&r| emb.features.row(r))
    };
    let mut distances = Vec::with_capacity(pairs.len());
    let mut normalized = Vec::with_capacity(pairs.len());
    let unit = |v: &[f32]| -> Vec<f64> {
        let n = v
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        v.iter().map(|x| *x as f64 / n).collect()
    };
    let (mut same, mut diff) = ((0.0, 0usize), (0.0, 0usize));
    for p in &pairs {
        let d = match (vec_of(&p.a), vec_of(&p.b)) {
            (Some(a), Some(b)) => {
                let (ua, ub) = (unit(a), unit(b));
                normalized.push(
                    ua.iter()
                        .zip(&ub)
                        .map(|(x, y)| (x - y).powi(2))
                        .sum::<f64>()
                        .sqrt(),
                );
                a.iter()
                    .zip(b)
                    .map(|(x, y)| ((x - y) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            }
            _ => {
                normalized.push(f64::INFINITY);
                f64::INFINITY
            }
        };
        if d.is_finite() {
            let acc = if p.same { &mut same } else { &mut diff };
            acc.0 += d;
            acc.1 += 1;
        }
        distances.push(d);
    }
    let v = k_fold(&distances, &pairs, folds);
    let vn = k_fold(&normalized, &pairs, folds);
    Ok(VerifyReport {
        model_id: embedder.model_id(),
        n_pairs: pairs.len(),
        n_images: images.len(),
        rejected: emb.rejected,
        mean_accuracy: v.mean_accuracy,
        std_accuracy: v.std_accuracy,
        folds: v.folds,
        mean_same_distance: same.0 / same.1.max(1) as f64,
        mean_different_distance: diff.0 / diff.1.max(1) as f64,
        normalized_mean_accuracy: vn.mean_accuracy,
        normalized_std_accuracy: vn.std_accuracy,
        seconds: emb.seconds,
        faces_per_second: images.len() as f64 / emb.seconds.max(1e-9),
    })
}

/// The distinct images (name, number) that `pairs` name, sorted.
pub fn pair_images(pairs: &[Pair]) -> Vec<(String, usize)> {
    let mut keys: Vec<(String, usize)> = pairs
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_separates_and_counts_ties() {
        let items = [(0.1, true), (0.2, true), (0.5, false), (0.7, false)];
        let (t, acc) = best_threshold(&items);
        assert!((0.2..0.5).contains(&t), "{t}");
        assert_eq!(acc, 1.0);
        // One overlapping pair: best accuracy 3/4.
        let items = [(0.1, true), (0.6, true), (0.5, false), (0.7, false)];
        assert_eq!(best_threshold(&items).1, 0.75);
        // All different: threshold below everything, accuracy 1.
        let (t, acc) = best_threshold(&[(0.3, false), (0.4, false)]);
        assert!(t < 0.3 && acc == 1.0);
    }

    /// An embedder whose vector is the image's mean colour.
    struct Colour(crate::embed::image::DecodeLimits);

    impl crate::embed::FaceEmbedder for Colour {
        fn model_id(&self) -> String {
            "colour".into()
        }
        fn dim(&self) -> usize {
            3
        }
        fn limits(&self) -> &crate::embed::image::DecodeLimits {
            &self.0
        }
        fn embed_images(
            &self,
            images: &[&crate::embed::image::RgbImage],
        ) -> Vec<Result<crate::embed::EmbeddedFace, crate::embed::EmbedError>> {
            images
                .iter()
                .map(|img| {
                    let n = (img.width * img.height) as f32;
                    let mut v = vec![0f32; 3];
                    for p in img.pixels.chunks(3) {
                        (0..3).for_each(|c| v[c] += p[c] as f32 / n);
                    }
                    Ok(crate::embed::EmbeddedFace {
                        vector: v,
                        quality: None,
                        located: None,
                    })
                })
                .collect()
        }
    }

    #[test]
    fn verify_on_the_first_folds_embeds_and_scores_only_their_pairs() {
        let dir = tempfile::tempdir().unwrap();
        // Three folds of one matched and one mismatched pair; person p<f> has two photos of
        // nearly one colour, q<f> one photo of another.
        let mut text = String::from("3\t1\n");
        for f in 0..3u8 {
            for (name, n, rgb) in [
                (format!("p{f}"), 1, [200, 10 * f, 10]),
                (format!("p{f}"), 2, [205, 10 * f, 10]),
                (format!("q{f}"), 1, [10, 10 * f, 200]),
            ] {
                let path = image_path(dir.path(), &name, n);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                image::RgbImage::from_pixel(64, 64, image::Rgb(rgb))
                    .save_with_format(&path, image::ImageFormat::Jpeg)
                    .unwrap();
            }
            text += &format!("p{f}\t1\t2\np{f}\t1\tq{f}\t1\n");
        }
        std::fs::write(dir.path().join("pairs.txt"), text).unwrap();
        let emb = Colour(crate::embed::image::DecodeLimits::default());
        let all = verify(dir.path(), &emb, 4, None, &|_, _| {}).unwrap();
        assert_eq!((all.n_pairs, all.n_images, all.folds.len()), (6, 9, 3));
        assert_eq!(all.mean_accuracy, 1.0, "{all:?}");
        let two = verify(dir.path(), &emb, 4, Some(2), &|_, _| {}).unwrap();
        assert_eq!((two.n_pairs, two.n_images, two.folds.len()), (4, 6, 2));
        assert_eq!(two.mean_accuracy, 1.0);
        for k in [0, 1, 4] {
            let e = verify(dir.path(), &emb, 4, Some(k), &|_, _| {}).unwrap_err();
            assert!(e.to_string().contains("want 2..=3"), "{e}");
        }
    }

    #[test]
    fn k_fold_uses_other_folds_threshold() {
        // Fold 0 would want a threshold of ~0.9 on its own, but folds 1 and 2 fix ~0.45.
        let mut pairs = Vec::new();
        let mut d = Vec::new();
        for fold in 0..3 {
            for (dist, same) in [(0.4, true), (0.5, false)] {
                pairs.push(Pair {
                    a: ("a".into(), 1),
                    b: ("b".into(), 1),
                    same,
                    fold,
                });
                d.push(if fold == 0 && same { 0.8 } else { dist });
            }
        }
        let v = k_fold(&d, &pairs, 3);
        assert_eq!(v.folds[0].1, 0.5);
        assert_eq!(v.folds[1].1, 1.0);
        assert!((v.mean_accuracy - 2.5 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn pairs_file_is_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pairs.txt");
        std::fs::write(&p, "2\t1\nA\t1\t2\nB\t1\tC\t3\nD\t2\t3\nE\t1\tF\t1\n").unwrap();
        let (folds, pairs) = read_pairs(&p).unwrap();
        assert_eq!(folds, 2);
        assert_eq!(pairs.len(), 4);
        assert!(pairs[0].same && !pairs[1].same && pairs[2].same);
        assert_eq!(pairs[3].fold, 1);
        assert_eq!(pairs[1].b, ("C".to_string(), 3));
        std::fs::write(&p, "1\t1\nA\t1\tB\t2\nC\t1\t2\n").unwrap();
        assert!(read_pairs(&p).unwrap_err().to_string().contains("order"));
        std::fs::write(&p, "1\t1\nA\tx\t2\n").unwrap();
        assert!(read_pairs(&p).unwrap_err().to_string().contains("'x'"));
    }
}
