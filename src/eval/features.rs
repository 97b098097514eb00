//! Learn-to-cluster feature and label files: reading, validating and writing them.
//!
//! This module owns the on-disk format shared with the learn-to-cluster benchmark code:
//! a `.bin` file holds raw little-endian `f32` rows with no header (the row width, `dim`,
//! is given out of band), and a `.meta` file holds one integer identity label per line.
//! Everything else in the evaluation path (kNN, metrics, baselines) works on the
//! [`Features`] this module returns, so the validation here is the only place that has to
//! distrust the bytes on disk.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Rows whose L2 norm is below this cannot be normalized meaningfully: dividing by such a
/// norm would turn rounding noise into a unit vector that matches nothing real.
const MIN_ROW_NORM: f64 = 1e-12;

/// A dense matrix of feature rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Number of values per row; every row has exactly this many.
    pub dim: usize,
    /// The `n * dim` values, row-major, so row `i` is `data[i * dim..(i + 1) * dim]`.
    pub data: Vec<f32>,
}

impl Features {
    /// Number of rows (faces).
    pub fn n(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Row `i` as a slice of `dim` values.
    ///
    /// # Panics
    /// If `i >= self.n()`, like slice indexing.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Everything that can go wrong reading or writing the data files. Every message names the
/// file and says what to do about it, because these errors end up in front of a person
/// running an evaluation from the command line.
#[derive(Debug, Error)]
pub enum FeaturesError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}; check that the path exists and is readable", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be created or written.
    #[error("cannot write {}: {source}; check that the directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A row width of zero was requested.
    #[error("cannot read {}: the feature dimension is 0; pass the real row width with --dim", path.display())]
    ZeroDim { path: PathBuf },
    /// The file holds no bytes at all.
    #[error("{} is empty; it should hold raw little-endian f32 rows", path.display())]
    Empty { path: PathBuf },
    /// The byte length does not divide into whole rows.
    #[error(
        "{} is {len_bytes} bytes, which is not a multiple of dim * 4 = {row_bytes} (dim = {dim}); \
         the file is truncated or --dim is wrong",
        path.display()
    )]
    BadLength {
        path: PathBuf,
        len_bytes: u64,
        dim: usize,
        row_bytes: u64,
    },
    /// A row holds NaN or an infinity.
    #[error("{} row {row} holds NaN or infinity; regenerate the features or drop that face", path.display())]
    NonFinite { path: PathBuf, row: usize },
    /// A row is (nearly) all zeros and so has no direction.
    #[error(
        "{} row {row} has a zero (or < 1e-12) norm and cannot be normalized; \
         regenerate the features or drop that face",
        path.display()
    )]
    ZeroRow { path: PathBuf, row: usize },
    /// A label line is not an integer.
    #[error("{} line {line}: {text:?} is not an integer label; each line must hold one integer", path.display())]
    BadLabel {
        path: PathBuf,
        line: usize,
        text: String,
    },
    /// A score line is not a finite number.
    #[error("{} line {line}: {text:?} is not a number; each line must hold one score", path.display())]
    BadScore {
        path: PathBuf,
        line: usize,
        text: String,
    },
    /// The two files describe different numbers of faces.
    #[error(
        "{} holds {n_features} feature rows but {} holds {n_labels} labels; \
         they must describe the same faces in the same order (check --dim and that the files belong together)",
        features_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        features_path: PathBuf,
        n_features: usize,
        labels_path: PathBuf,
        n_labels: usize,
    },
}

/// Reads a `.bin` feature file of rows `dim` values wide and returns the rows L2-normalized.
///
/// Normalizing here, once, lets every consumer treat a dot product as cosine similarity.
pub fn read_features(path: &Path, dim: usize) -> Result<Features, FeaturesError> {
    if dim == 0 {
        return Err(FeaturesError::ZeroDim {
            path: path.to_path_buf(),
        });
    }
    let bytes = fs::read(path).map_err(|source| FeaturesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(FeaturesError::Empty {
            path: path.to_path_buf(),
        });
    }
    let row_bytes = dim * 4;
    if bytes.len() % row_bytes != 0 {
        return Err(FeaturesError::BadLength {
            path: path.to_path_buf(),
            len_bytes: bytes.len() as u64,
            dim,
            row_bytes: row_bytes as u64,
        });
    }
    let mut data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for (row_index, row) in data.chunks_exact_mut(dim).enumerate() {
        if row.iter().any(|v| !v.is_finite()) {
            return Err(FeaturesError::NonFinite {
                path: path.to_path_buf(),
                row: row_index,
            });
        }
        // The norm is accumulated in f64 so that large-but-finite f32 values cannot
        // overflow to infinity while squaring.
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm < MIN_ROW_NORM {
            return Err(FeaturesError::ZeroRow {
                path: path.to_path_buf(),
                row: row_index,
            });
        }
        for v in row.iter_mut() {
            *v = (f64::from(*v) / norm) as f32;
        }
    }
    Ok(Features { dim, data })
}

/// Reads a `.meta` label file: one integer per line. Surrounding whitespace (including a
/// Windows `\r`) is ignored; a blank line is an error, because silently skipping it would
/// shift every later label onto the wrong face.
pub fn read_labels(path: &Path) -> Result<Vec<i64>, FeaturesError> {
    let text = fs::read_to_string(path).map_err(|source| FeaturesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let trimmed = line.trim();
            trimmed.parse::<i64>().map_err(|_| FeaturesError::BadLabel {
                path: path.to_path_buf(),
                line: i + 1,
                text: trimmed.to_string(),
            })
        })
        .collect()
}

/// Checks that a feature file and a label file describe the same number of faces.
pub fn check_counts(
    features: &Features,
    labels: &[i64],
    features_path: &Path,
    labels_path: &Path,
) -> Result<(), FeaturesError> {
    if features.n() != labels.len() {
        return Err(FeaturesError::CountMismatch {
            features_path: features_path.to_path_buf(),
            n_features: features.n(),
            labels_path: labels_path.to_path_buf(),
            n_labels: labels.len(),
        });
    }
    Ok(())
}

/// Writes features as raw little-endian `f32` rows, no header.
pub fn write_features(path: &Path, features: &Features) -> Result<(), FeaturesError> {
    let mut bytes = Vec::with_capacity(features.data.len() * 4);
    for v in &features.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    fs::write(path, bytes).map_err(|source| FeaturesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes labels one per line, newline-terminated.
pub fn write_labels(path: &Path, labels: &[i64]) -> Result<(), FeaturesError> {
    let write_err = |source| FeaturesError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::create(path).map_err(write_err)?;
    let mut out = std::io::BufWriter::new(file);
    for label in labels {
        writeln!(out, "{label}").map_err(write_err)?;
    }
    out.flush().map_err(write_err)
}

/// Writes one number per line (per-face scores beside a features file).
pub fn write_scores(path: &Path, scores: &[f32]) -> Result<(), FeaturesError> {
    let text: String = scores.iter().map(|s| format!("{s}\n")).collect();
    std::fs::write(path, text).map_err(|source| FeaturesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads one finite number per line; a line that is not one is reported with its number.
pub fn read_scores(path: &Path) -> Result<Vec<f32>, FeaturesError> {
    let text = std::fs::read_to_string(path).map_err(|source| FeaturesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            l.trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| FeaturesError::BadScore {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: l.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(path: &Path, values: &[f32]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn round_trip_normalizes_and_preserves() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("f.bin");
        let meta = dir.path().join("f.meta");
        raw(&bin, &[3.0, 4.0, 0.0, -2.0]);
        let features = read_features(&bin, 2).unwrap();
        assert_eq!(features.n(), 2);
        assert_eq!(features.row(0), &[0.6, 0.8]);
        assert_eq!(features.row(1), &[0.0, -1.0]);

        // Already-normalized rows survive a write/read cycle bit for bit.
        write_features(&bin, &features).unwrap();
        assert_eq!(read_features(&bin, 2).unwrap(), features);

        let labels = vec![7, -3];
        write_labels(&meta, &labels).unwrap();
        assert_eq!(read_labels(&meta).unwrap(), labels);
        check_counts(&features, &labels, &bin, &meta).unwrap();
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.bin");
        let err = read_features(&missing, 4).unwrap_err();
        assert!(matches!(err, FeaturesError::Read { .. }));
        assert!(err.to_string().contains("missing.bin"));
        let err = read_labels(&dir.path().join("missing.meta")).unwrap_err();
        assert!(matches!(err, FeaturesError::Read { .. }));
    }

    #[test]
    fn zero_dim_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("f.bin");
        raw(&bin, &[1.0]);
        assert!(matches!(
            read_features(&bin, 0),
            Err(FeaturesError::ZeroDim { .. })
        ));
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("f.bin");
        fs::write(&bin, b"").unwrap();
        let err = read_features(&bin, 4).unwrap_err();
        assert!(matches!(err, FeaturesError::Empty { .. }));
        assert!(err.to_string().contains("f.bin"));
    }

    #[test]
    fn bad_length_reports_bytes_and_dim() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("f.bin");
        raw(&bin, &[1.0, 2.0, 3.0]);
        let err = read_features(&bin, 2).unwrap_err();
        assert!(matches!(
            err,
            FeaturesError::BadLength {
                len_bytes: 12,
                dim: 2,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("12 bytes") && msg.contains("dim = 2") && msg.contains("--dim"));
    }

    #[test]
    fn non_finite_row_is_reported_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("f.bin");
        raw(&bin, &[1.0, 0.0, 0.0, f32::NAN]);
        assert!(matches!(
            read_features(&bin, 2),
            Err(FeaturesError::NonFinite { row: 1, .. })
        ));
        raw(&bin, &[f32::INFINITY, 0.0]);
        assert!(matches!(
            read_features(&bin, 2),
            Err(FeaturesError::NonFinite { row: 0, .. })
        ));
    }

    #[test]
    fn zero_row_is_reported_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("f.bin");
        raw(&bin, &[1.0, 0.0, 0.0, 0.0, 1e-20, 0.0]);
        let err = read_features(&bin, 2).unwrap_err();
        assert!(matches!(err, FeaturesError::ZeroRow { row: 1, .. }));
    }

    #[test]
    fn bad_label_reports_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("f.meta");
        fs::write(&meta, "1\n2\nthree\n").unwrap();
        let err = read_labels(&meta).unwrap_err();
        assert!(matches!(err, FeaturesError::BadLabel { line: 3, .. }));
        assert!(err.to_string().contains("three"));
        fs::write(&meta, "1\n\n2\n").unwrap();
        assert!(matches!(
            read_labels(&meta),
            Err(FeaturesError::BadLabel { line: 2, .. })
        ));
        // A CRLF file and a missing final newline are both fine.
        fs::write(&meta, "1\r\n2").unwrap();
        assert_eq!(read_labels(&meta).unwrap(), vec![1, 2]);
    }

    #[test]
    fn count_mismatch_names_both_files_and_counts() {
        let features = Features {
            dim: 1,
            data: vec![1.0, 1.0, 1.0],
        };
        let err =
            check_counts(&features, &[0, 1], Path::new("a.bin"), Path::new("b.meta")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("a.bin") && msg.contains("b.meta"));
        assert!(msg.contains("3 feature rows") && msg.contains("2 labels"));
    }
}
