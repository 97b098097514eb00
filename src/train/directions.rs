//! Learning the proxy's hallucination directions (`crate::proxy::Directions`): the leading
//! eigenvectors of the within-identity scatter, by cyclic Jacobi rotations.

use std::collections::HashMap;

use super::TrainError;
use crate::eval::features::Features;
use crate::proxy::Directions;

const PART: &str = "directions";

/// The `count` leading eigenvectors of the within-identity scatter of the L2-normalized
/// `features` (identities with one face contribute nothing).
pub fn learn_directions(
    features: &Features,
    labels: &[i64],
    count: usize,
) -> Result<Directions, TrainError> {
    let d = features.dim;
    if labels.len() != features.n() {
        return Err(TrainError::Fit(
            PART,
            format!("{} labels for {} rows", labels.len(), features.n()),
        ));
    }
    if count == 0 || count > d {
        return Err(TrainError::Fit(
            PART,
            format!("direction count {count} outside 1..={d}"),
        ));
    }
    let unit: Vec<Vec<f64>> = (0..features.n())
        .map(|i| {
            let r = features.row(i);
            let n = r
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            r.iter().map(|v| *v as f64 / n).collect()
        })
        .collect();
    let mut by_label: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, l) in labels.iter().enumerate() {
        by_label.entry(*l).or_default().push(i);
    }
    let mut scatter = vec![0f64; d * d];
    let mut samples = 0usize;
    let mut groups: Vec<&Vec<usize>> = by_label.values().filter(|g| g.len() >= 2).collect();
    groups.sort();
    for g in groups {
        let mut mean = vec![0f64; d];
        for &i in g {
            for (m, v) in mean.iter_mut().zip(&unit[i]) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= g.len() as f64);
        for &i in g {
            let x: Vec<f64> = unit[i].iter().zip(&mean).map(|(v, m)| v - m).collect();
            for r in 0..d {
                for c in r..d {
                    scatter[r * d + c] += x[r] * x[c];
                }
            }
            samples += 1;
        }
    }
    if samples == 0 {
        return Err(TrainError::Fit(PART, "no identity has two faces".into()));
    }
    for r in 0..d {
        for c in 0..r {
            scatter[r * d + c] = scatter[c * d + r];
        }
    }
    scatter.iter_mut().for_each(|v| *v /= samples as f64);
    let (values, vectors) = symmetric_eigen(&scatter, d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut out = Directions {
        dim: d,
        vectors: Vec::with_capacity(count * d),
        sigmas: Vec::with_capacity(count),
    };
    for &k in order.iter().take(count) {
        // Column k of the eigenvector matrix; sign fixed so the largest component is positive
        // (a deterministic choice: the variants use both signs anyway).
        let mut v: Vec<f64> = (0..d).map(|r| vectors[r * d + k]).collect();
        let big = v
            .iter()
            .copied()
            .fold(0f64, |a, x| if x.abs() > a.abs() { x } else { a });
        if big < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        out.vectors.extend(v.iter().map(|x| *x as f32));
        out.sigmas.push(values[k].max(0.0).sqrt() as f32);
    }
    Ok(out)
}

/// Eigen-decomposition of a symmetric `d x d` matrix (row-major) by cyclic Jacobi rotations:
/// (eigenvalues, eigenvectors as the columns of a row-major matrix).
pub fn symmetric_eigen(m: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|r| (0..d).filter(move |&c| c != r).map(move |c| (r, c)))
            .map(|(r, c)| a[r * d + c].powi(2))
            .sum();
        let diag: f64 = (0..d).map(|i| a[i * d + i].powi(2)).sum();
        if off <= 1e-22 * diag.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let akp = a[k * d + p];
                    let akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let apk = a[p * d + k];
                    let aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let vkp = v[k * d + p];
                    let vkq = v[k * d + q];
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightsError;

    #[test]
    fn jacobi_recovers_a_known_spectrum() {
        // A = R diag(3, 1, 0.5) R^T for a rotation R.
        let (c, s) = (0.6f64, 0.8f64);
        let r = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0];
        let l = [3.0, 1.0, 0.5];
        let mut a = vec![0f64; 9];
        for i in 0..3 {
            for j in 0..3 {
                a[i * 3 + j] = (0..3).map(|k| r[i * 3 + k] * l[k] * r[j * 3 + k]).sum();
            }
        }
        let (vals, vecs) = symmetric_eigen(&a, 3);
        let mut sorted = vals.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (g, w) in sorted.iter().zip(l) {
            assert!((g - w).abs() < 1e-10, "{vals:?}");
        }
        // A v = lambda v for every column.
        for k in 0..3 {
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i * 3 + j] * vecs[j * 3 + k]).sum();
                assert!((av - vals[k] * vecs[i * 3 + k]).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn learned_direction_is_the_within_identity_variation() {
        // Two identities; within each, faces vary along axis 2 only.
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for (l, base) in [(0i64, [1.0f32, 0.0, 0.0, 0.0]), (1, [0.0, 1.0, 0.0, 0.0])] {
            for t in [-0.2f32, -0.1, 0.0, 0.1, 0.2] {
                let mut v = base;
                v[2] = t;
                data.extend_from_slice(&v);
                labels.push(l);
            }
        }
        let f = Features { dim: 4, data };
        let d = learn_directions(&f, &labels, 1).unwrap();
        let u = d.vector(0);
        assert!(u[2].abs() > 0.99, "{u:?}");
        assert!(d.sigmas[0] > 0.05);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.safetensors");
        d.save(&p).unwrap();
        assert_eq!(Directions::load(&p, 4).unwrap(), d);
        assert!(matches!(
            Directions::load(&p, 8),
            Err(WeightsError::Shape { .. })
        ));
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(
            Directions::load(&p, 4),
            Err(WeightsError::Read { .. })
        ));
    }
}
