//! Fitting the CLIP mapper H (`crate::hallucinate::Mapper`): how identity vectors follow CLIP
//! image changes within one identity.
//!
//! For two faces i, j of one person, H([f_i ; c_j - c_i]) should predict f_j - f_i. Mean squared
//! error, candle-nn's AdamW, identities split into fitted and held-out parts (the held-out error
//! is reported against H = 0), seeded.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use std::collections::HashMap;

use super::TrainError;
use crate::eval::features::Features;
use crate::hallucinate::Mapper;
#[cfg(test)]
use crate::weights::WeightsError;

const PART: &str = "mapper";

/// Settings of `train --mapper-out`.
#[derive(Debug, Clone, PartialEq)]
pub struct MapperTraining {
    pub hidden: usize,
    /// Same-identity pairs per identity (both orders count), at most.
    pub pairs_per_identity: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub holdout: f64,
    pub seed: u64,
}

impl Default for MapperTraining {
    fn default() -> Self {
        Self {
            hidden: 64,
            pairs_per_identity: 20,
            epochs: 30,
            batch: 256,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            holdout: 0.1,
            seed: 1,
        }
    }
}

/// One epoch's numbers (mean squared error per vector, summed over dimensions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapperEpoch {
    pub epoch: usize,
    pub train_mse: f64,
    pub holdout_mse: f64,
    /// The held-out error of H = 0 (predicting no change): the bar to clear.
    pub holdout_zero_mse: f64,
}

/// Trains H on identity vectors `features` and CLIP embeddings `clip` of the same faces (row i
/// of each is face i) with identity `labels`.
pub fn train(
    features: &Features,
    clip: &Features,
    labels: &[i64],
    opts: &MapperTraining,
    progress: &mut dyn FnMut(&MapperEpoch),
) -> Result<(Mapper, MapperEpoch), TrainError> {
    let (d, e, n) = (features.dim, clip.dim, features.n());
    let t = |x: candle_core::Error| TrainError::Fit(PART, x.to_string());
    if clip.n() != n || labels.len() != n {
        return Err(TrainError::Fit(
            PART,
            format!(
                "{n} identity vectors, {} CLIP embeddings and {} labels: one of each per face",
                clip.n(),
                labels.len()
            ),
        ));
    }
    if opts.hidden == 0 || opts.epochs == 0 || opts.batch == 0 || opts.pairs_per_identity == 0 {
        return Err(TrainError::Fit(
            PART,
            format!("hidden, epochs, batch and pairs per identity must be positive ({opts:?})"),
        ));
    }
    let (fu, cu) = (
        crate::train::unit_rows(features),
        crate::train::unit_rows(clip),
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut by_label: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, l) in labels.iter().enumerate() {
        by_label.entry(*l).or_default().push(i);
    }
    let held = crate::train::held_out_identities(labels, opts.holdout, &mut rng);
    let mut ids: Vec<i64> = by_label.keys().copied().collect();
    ids.sort_unstable();
    // (input, target) rows for each part.
    let w = d + e;
    let mut parts: [(Vec<f32>, Vec<f32>); 2] = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for id in &ids {
        let g = &by_label[id];
        if g.len() < 2 {
            continue;
        }
        let mut pairs: Vec<(usize, usize)> = g
            .iter()
            .flat_map(|&i| g.iter().filter(move |&&j| j != i).map(move |&j| (i, j)))
            .collect();
        pairs.shuffle(&mut rng);
        let part = &mut parts[usize::from(held.contains(id))];
        for (i, j) in pairs.into_iter().take(opts.pairs_per_identity) {
            part.0.extend_from_slice(fu.row(i));
            part.0
                .extend(cu.row(j).iter().zip(cu.row(i)).map(|(a, b)| a - b));
            part.1
                .extend(fu.row(j).iter().zip(fu.row(i)).map(|(a, b)| a - b));
        }
    }
    let n_fit = parts[0].1.len() / d;
    let n_hold = parts[1].1.len() / d;
    if n_fit == 0 {
        return Err(TrainError::Fit(
            PART,
            "no identity with two or more faces among the fitted identities".into(),
        ));
    }
    let cpu = Device::Cpu;
    let bound = (1.0 / w as f32).sqrt();
    let w1: Vec<f32> = (0..opts.hidden * w)
        .map(|_| rng.gen_range(-bound..bound))
        .collect();
    let w1 =
        Var::from_tensor(&Tensor::from_vec(w1, (opts.hidden, w), &cpu).map_err(t)?).map_err(t)?;
    let b1 =
        Var::from_tensor(&Tensor::zeros(opts.hidden, DType::F32, &cpu).map_err(t)?).map_err(t)?;
    // Zero output layer: the untrained mapper is H = 0.
    let w2 = Var::from_tensor(&Tensor::zeros((d, opts.hidden), DType::F32, &cpu).map_err(t)?)
        .map_err(t)?;
    let b2 = Var::from_tensor(&Tensor::zeros(d, DType::F32, &cpu).map_err(t)?).map_err(t)?;
    let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.matmul(&w1.as_tensor().t()?)?
            .broadcast_add(b1.as_tensor())?
            .relu()?
            .matmul(&w2.as_tensor().t()?)?
            .broadcast_add(b2.as_tensor())
    };
    // Mean over vectors of the squared error summed over dimensions.
    let mse = |pred: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        ((pred - y)?.sqr()?.sum(1)?).mean_all()
    };
    let hold = if n_hold > 0 {
        Some((
            Tensor::from_vec(parts[1].0.clone(), (n_hold, w), &cpu).map_err(t)?,
            Tensor::from_vec(parts[1].1.clone(), (n_hold, d), &cpu).map_err(t)?,
        ))
    } else {
        None
    };
    let zero_mse = match &hold {
        Some((_, y)) => y
            .sqr()
            .and_then(|s| s.sum(1))
            .and_then(|s| s.mean_all())
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(t)? as f64,
        None => f64::NAN,
    };
    let mut opt = AdamW::new(
        vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()],
        ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )
    .map_err(t)?;
    let mut order: Vec<usize> = (0..n_fit).collect();
    let mut last = None;
    for epoch in 1..=opts.epochs {
        order.shuffle(&mut rng);
        let mut total = 0f64;
        for rows in order.chunks(opts.batch) {
            let mut xb = Vec::with_capacity(rows.len() * w);
            let mut yb = Vec::with_capacity(rows.len() * d);
            for &r in rows {
                xb.extend_from_slice(&parts[0].0[r * w..(r + 1) * w]);
                yb.extend_from_slice(&parts[0].1[r * d..(r + 1) * d]);
            }
            let step = || -> candle_core::Result<(Tensor, f64)> {
                let xb = Tensor::from_vec(xb, (rows.len(), w), &cpu)?;
                let yb = Tensor::from_vec(yb, (rows.len(), d), &cpu)?;
                let loss = mse(&forward(&xb)?, &yb)?;
                let v = loss.to_scalar::<f32>()? as f64;
                Ok((loss, v))
            };
            let (loss, v) = step().map_err(t)?;
            opt.backward_step(&loss).map_err(t)?;
            total += v * rows.len() as f64;
        }
        let holdout_mse = match &hold {
            Some((x, y)) => forward(x)
                .and_then(|p| mse(&p, y))
                .and_then(|l| l.to_scalar::<f32>())
                .map_err(t)? as f64,
            None => f64::NAN,
        };
        let r = MapperEpoch {
            epoch,
            train_mse: total / n_fit as f64,
            holdout_mse,
            holdout_zero_mse: zero_mse,
        };
        progress(&r);
        last = Some(r);
    }
    let read = |v: &Var| crate::train::var_values(v).map_err(t);
    let mapper = Mapper {
        dim: d,
        clip_dim: e,
        hidden: opts.hidden,
        w1: read(&w1)?,
        b1: read(&b1)?,
        w2: read(&w2)?,
        b2: read(&b2)?,
    };
    let report = last.ok_or_else(|| TrainError::Fit(PART, "no epoch ran".into()))?;
    Ok((mapper, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hallucinate::prompts::Direction;
    use crate::hallucinate::unit;
    use rand_distr::{Distribution, Normal};

    /// Faces whose identity vectors change as a fixed linear map of their CLIP change: within one
    /// identity, f = centre + M c (plus a little noise), c varying per picture.
    fn toy() -> (Features, Features, Vec<i64>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let g = Normal::new(0.0f32, 1.0).unwrap();
        let (d, e) = (6, 10);
        let m: Vec<f32> = (0..d * e).map(|_| 0.15 * g.sample(&mut rng)).collect();
        let (mut fd, mut cd, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for id in 0..80i64 {
            let centre: Vec<f32> = (0..d).map(|_| 2.0 * g.sample(&mut rng)).collect();
            for _ in 0..4 {
                let mut c: Vec<f32> = (0..e).map(|_| g.sample(&mut rng)).collect();
                unit(&mut c);
                for o in 0..d {
                    let mc: f32 = (0..e).map(|k| m[o * e + k] * c[k]).sum();
                    fd.push(centre[o] + mc + 0.002 * g.sample(&mut rng));
                }
                cd.extend_from_slice(&c);
                labels.push(id);
            }
        }
        (
            Features { dim: d, data: fd },
            Features { dim: e, data: cd },
            labels,
        )
    }

    #[test]
    fn the_mapper_learns_how_identity_vectors_follow_clip_changes() {
        let (f, c, l) = toy();
        let opts = MapperTraining {
            hidden: 32,
            epochs: 60,
            batch: 64,
            learning_rate: 3e-3,
            holdout: 0.2,
            ..Default::default()
        };
        let (h, r) = train(&f, &c, &l, &opts, &mut |_| {}).unwrap();
        assert!(
            r.holdout_mse < 0.5 * r.holdout_zero_mse,
            "held-out error {} vs H = 0 {}",
            r.holdout_mse,
            r.holdout_zero_mse
        );
        let (again, _) = train(&f, &c, &l, &opts, &mut |_| {}).unwrap();
        assert_eq!(again, h, "seeded");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        h.save(&p).unwrap();
        assert_eq!(Mapper::load(&p, 6, 10).unwrap(), h);
        assert!(matches!(
            Mapper::load(&p, 6, 12),
            Err(WeightsError::Shape { .. })
        ));
        std::fs::write(&p, b"nope").unwrap();
        assert!(matches!(
            Mapper::load(&p, 6, 10),
            Err(WeightsError::Read { .. })
        ));

        // The hallucinator: one unit variant per direction; a zero-strength edit is f itself.
        let mut dir_v = vec![0f32; 10];
        dir_v[0] = 1.0;
        let hall = crate::hallucinate::Hallucinator {
            directions: vec![
                Direction {
                    name: "moved".into(),
                    vector: dir_v.clone(),
                    strength: 1.0,
                },
                Direction {
                    name: "still".into(),
                    vector: dir_v,
                    strength: 0.0,
                },
            ],
            mapper: h,
        };
        let mut fu = f.row(0).to_vec();
        unit(&mut fu);
        let mut cu = c.row(0).to_vec();
        unit(&mut cu);
        let v = hall.variants(&fu, &cu).unwrap();
        assert_eq!(v.len(), 2);
        let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let moved: f32 = v[0].iter().zip(&fu).map(|(a, b)| (a - b).abs()).sum();
        assert!(moved > 1e-3, "the edit moves f");
        // Zero edit: exactly f.
        for (a, b) in v[1].iter().zip(&fu) {
            assert!((a - b).abs() < 1e-6, "a zero edit leaves f as it is");
        }
        assert!(matches!(
            hall.variants(&fu[..5], &cu),
            Err(crate::hallucinate::HallucinateError::Input(_))
        ));
    }

    #[test]
    fn an_untrained_mapper_is_zero() {
        let (f, c, l) = toy();
        let opts = MapperTraining {
            epochs: 1,
            learning_rate: 0.0,
            ..Default::default()
        };
        let (h, _) = train(&f, &c, &l, &opts, &mut |_| {}).unwrap();
        assert!(h.forward(f.row(0), c.row(0)).iter().all(|x| *x == 0.0));
    }
}
