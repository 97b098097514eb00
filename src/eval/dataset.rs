//! Labeled face directories (identity = folder name, as LFW's `images/<Name>/*.jpg`): listing them
//! and embedding them into learn-to-cluster features + labels + a names file, so `eval`, `train`
//! and the benchmarks reuse one embedding run. Bad images are counted by class and skipped; they
//! never stop the run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

use crate::embed::FaceEmbedder;
use crate::eval::features::Features;

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no images (.jpg, .jpeg, .png, .webp) under {0}: expected DIR/<identity>/<image>")]
    Empty(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("embedding failed: {0}")]
    Model(String),
}

/// One image with its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledImage {
    pub path: PathBuf,
    pub identity: String,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png" | "webp")
    )
}

/// Lists `dir/<identity>/<image>` in sorted order (an LFW root, holding `images/`, is accepted too).
/// `only` keeps the listed identities (e.g. from `peopleDevTest.txt`).
pub fn list(dir: &Path, only: Option<&[String]>) -> Result<Vec<LabeledImage>, DatasetError> {
    let root = if dir.join("images").is_dir() {
        dir.join("images")
    } else {
        dir.to_path_buf()
    };
    let read = |p: &Path| -> Result<Vec<PathBuf>, DatasetError> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|source| DatasetError::List {
                path: p.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let keep: Option<std::collections::HashSet<&str>> =
        only.map(|o| o.iter().map(String::as_str).collect());
    let mut out = Vec::new();
    for person in read(&root)? {
        if !person.is_dir() {
            continue;
        }
        let identity = person
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if keep
            .as_ref()
            .is_some_and(|k| !k.contains(identity.as_str()))
        {
            continue;
        }
        for path in read(&person)? {
            if path.is_file() && is_image(&path) {
                out.push(LabeledImage {
                    path,
                    identity: identity.clone(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(root));
    }
    Ok(out)
}

/// Embedded images: rows in the order of the images that embedded, labels numbering identities in
/// sorted order, the identity names, and the failures by class.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub features: Features,
    pub labels: Vec<i64>,
    pub names: Vec<String>,
    pub paths: Vec<PathBuf>,
    /// Per row, the face's quality score (src/quality.rs), -1 when the embedder gave none.
    pub quality: Vec<f32>,
    pub rejected: BTreeMap<String, usize>,
    pub seconds: f64,
}

/// Embeds `images` `chunk` at a time, calling `progress(done, total)`.
pub fn embed(
    embedder: &dyn FaceEmbedder,
    images: &[LabeledImage],
    chunk: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<Embedded, DatasetError> {
    let start = Instant::now();
    let mut names: Vec<String> = images.iter().map(|i| i.identity.clone()).collect();
    names.sort();
    names.dedup();
    let label_of: BTreeMap<&str, i64> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as i64))
        .collect();
    let dim = embedder.dim();
    let mut data = Vec::with_capacity(images.len() * dim);
    let mut labels = Vec::with_capacity(images.len());
    let mut paths = Vec::with_capacity(images.len());
    let mut quality = Vec::with_capacity(images.len());
    let mut rejected = BTreeMap::new();
    for (c, part) in images.chunks(chunk.max(1)).enumerate() {
        let bytes: Vec<Vec<u8>> = part
            .iter()
            .map(|i| {
                std::fs::read(&i.path).map_err(|source| DatasetError::Read {
                    path: i.path.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        // With embed.faces_per_image = "all" an image gives a row per face found, each
        // labelled with the image's identity.
        for (img, r) in part.iter().zip(embedder.embed_encoded_all(&refs)) {
            match r {
                Ok(faces) => {
                    for f in faces {
                        data.extend_from_slice(&f.vector);
                        labels.push(label_of[img.identity.as_str()]);
                        paths.push(img.path.clone());
                        quality.push(f.quality.unwrap_or(-1.0));
                    }
                }
                Err(crate::embed::EmbedError::Model(m)) => return Err(DatasetError::Model(m)),
                Err(e) => {
                    eprintln!("skipped {}: {e}", img.path.display());
                    *rejected.entry(e.class().to_string()).or_insert(0) += 1;
                }
            }
        }
        progress(
            (c * chunk.max(1) + part.len()).min(images.len()),
            images.len(),
        );
    }
    Ok(Embedded {
        features: Features { dim, data },
        labels,
        names,
        paths,
        quality,
        rejected,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes the names file: line `i` is the identity of label `i`.
pub fn write_names(path: &Path, names: &[String]) -> Result<(), DatasetError> {
    let w = |source| DatasetError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(w)?);
    for n in names {
        writeln!(f, "{n}").map_err(w)?;
    }
    f.flush().map_err(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_identities_sorted_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        for (p, f) in [
            ("Bob", "Bob_0002.jpg"),
            ("Bob", "Bob_0001.jpg"),
            ("Al", "a.png"),
            ("Al", "notes.txt"),
            ("Cy", "c.webp"),
        ] {
            std::fs::create_dir_all(dir.path().join(p)).unwrap();
            std::fs::write(dir.path().join(p).join(f), b"x").unwrap();
        }
        let all = list(dir.path(), None).unwrap();
        let got: Vec<(&str, String)> = all
            .iter()
            .map(|i| {
                (
                    i.identity.as_str(),
                    i.path.file_name().unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("Al", "a.png".to_string()),
                ("Bob", "Bob_0001.jpg".to_string()),
                ("Bob", "Bob_0002.jpg".to_string()),
                ("Cy", "c.webp".to_string())
            ]
        );
        let only = vec!["Cy".to_string()];
        assert_eq!(list(dir.path(), Some(&only)).unwrap().len(), 1);
        let none = vec!["Zed".to_string()];
        assert!(matches!(
            list(dir.path(), Some(&none)),
            Err(DatasetError::Empty(_))
        ));
    }
}
