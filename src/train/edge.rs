//! Fitting the edge head (`crate::edge::EdgeHead`): the candidate edges of the engine, each face's `k`
//! nearest neighbours among identity-labelled faces, labelled same / different identity; binary
//! cross-entropy on the logit with candle-nn's AdamW and candle's autograd.
//!
//! Training (`clip-cluster train --edge-out`, candle-nn's AdamW with candle's autograd): the
//! candidate edges of the engine — each face's `k` nearest neighbours — among identity-labeled
//! faces, labeled same / different identity; binary cross-entropy on the logit. Identities (not
//! faces) are split into a training part and a held-out part that reports the loss and accuracy
//! after every epoch. Seeded: initial weights and batch order come from one ChaCha stream, so
//! the same input and seed give the same head.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::TrainError;
use crate::edge::{pair_input, EdgeHead};
use crate::eval::features::Features;
#[cfg(test)]
use crate::weights::WeightsError;

const PART: &str = "edge head";

/// Settings of `train --edge-out`.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeTraining {
    /// Candidate edges per face: its `k` nearest neighbours (the engine's `search_k` scale).
    pub k: usize,
    pub hidden: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Fraction of identities held out to report generalization.
    pub holdout: f64,
    pub seed: u64,
}

impl Default for EdgeTraining {
    fn default() -> Self {
        Self {
            k: 10,
            hidden: 16,
            epochs: 40,
            batch: 512,
            learning_rate: 2e-3,
            weight_decay: 1e-4,
            holdout: 0.1,
            seed: 1,
        }
    }
}

/// One epoch's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub holdout_loss: f64,
    /// Accuracy on the held-out pairs at the head's best threshold there.
    pub holdout_accuracy: f64,
    /// The same for the cosine (the bar to clear).
    pub holdout_cosine_accuracy: f64,
}

struct Pairs {
    x: Vec<f32>,
    y: Vec<f32>,
    cos: Vec<f32>,
}

impl Pairs {
    fn len(&self) -> usize {
        self.y.len()
    }
}

/// Numerically stable binary cross-entropy on logits, averaged.
fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    // max(x, 0) - x y + log(1 + exp(-|x|))
    let relu = logits.relu()?;
    let xy = (logits * targets)?;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((relu - xy)? + soft)?.mean_all()
}

/// Best accuracy of "score > t" over all thresholds t.
fn best_threshold_accuracy(cos: &[f32], y: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..cos.len()).collect();
    idx.sort_by(|&a, &b| cos[b].total_cmp(&cos[a]));
    let negatives = y.iter().filter(|v| **v < 0.5).count();
    // Threshold below the first r items: they are predicted positive.
    let mut best = negatives;
    let mut correct = negatives;
    for &i in &idx {
        if y[i] > 0.5 {
            correct += 1;
        } else {
            correct -= 1;
        }
        best = best.max(correct);
    }
    best as f64 / cos.len().max(1) as f64
}

/// Trains the head on the candidate edges of `features` (one identity label per row).
/// `progress` sees every epoch.
pub fn train(
    features: &Features,
    labels: &[i64],
    opts: &EdgeTraining,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<(EdgeHead, EpochReport), TrainError> {
    let d = features.dim;
    let n = features.n();
    if labels.len() != n {
        return Err(TrainError::Fit(
            PART,
            format!("{} labels for {n} rows", labels.len()),
        ));
    }
    if n < 3 || opts.k == 0 || opts.hidden == 0 || opts.epochs == 0 || opts.batch == 0 {
        return Err(TrainError::Fit(
            PART,
            format!(
                "need >= 3 faces and positive k, hidden, epochs, batch (got {n} faces, {opts:?})"
            ),
        ));
    }
    let t = |e: candle_core::Error| TrainError::Fit(PART, e.to_string());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);

    // Identities split into training and held-out parts.
    let held = crate::train::held_out_identities(labels, opts.holdout, &mut rng);

    // Candidate edges within each part: a held-out face's neighbours are held-out faces, so both
    // parts have the base rate of same-identity pairs a stream of their own would have.
    let unit = crate::train::unit_rows(features);
    let w = EdgeHead::input_width(d);
    let mut train_set = Pairs {
        x: Vec::new(),
        y: Vec::new(),
        cos: Vec::new(),
    };
    let mut hold_set = Pairs {
        x: Vec::new(),
        y: Vec::new(),
        cos: Vec::new(),
    };
    let mut buf = Vec::with_capacity(w);
    for (part, set) in [(false, &mut train_set), (true, &mut hold_set)] {
        let rows: Vec<usize> = (0..n)
            .filter(|&i| held.contains(&labels[i]) == part)
            .collect();
        if rows.len() < 2 {
            continue;
        }
        let mut sub = Vec::with_capacity(rows.len() * d);
        for &i in &rows {
            sub.extend_from_slice(unit.row(i));
        }
        let sub = Features { dim: d, data: sub };
        let knn = crate::eval::knn::brute_force(&sub, opts.k);
        for (a, list) in knn.neighbors.iter().enumerate() {
            for &(b, s) in list {
                let b = b as usize;
                // Each unordered pair once (the input is symmetric).
                if b < a && knn.neighbors[b].iter().any(|&(x, _)| x as usize == a) {
                    continue;
                }
                let (i, j) = (rows[a], rows[b]);
                pair_input(unit.row(i), unit.row(j), s, &mut buf);
                set.x.extend_from_slice(&buf);
                set.y.push(if labels[i] == labels[j] { 1.0 } else { 0.0 });
                set.cos.push(s);
            }
        }
    }
    if train_set.len() == 0 || !train_set.y.iter().any(|v| *v > 0.5) {
        return Err(TrainError::Fit(
            PART,
            "no same-identity pair among the candidate edges: need identities with two or more faces"
                .into(),
        ));
    }

    // Weights: Kaiming-uniform-like init from the seeded stream.
    let cpu = Device::Cpu;
    let bound1 = (1.0 / w as f32).sqrt();
    let bound2 = (1.0 / opts.hidden as f32).sqrt();
    let w1: Vec<f32> = (0..opts.hidden * w)
        .map(|_| rng.gen_range(-bound1..bound1))
        .collect();
    let w2: Vec<f32> = (0..opts.hidden)
        .map(|_| rng.gen_range(-bound2..bound2))
        .collect();
    let w1 =
        Var::from_tensor(&Tensor::from_vec(w1, (opts.hidden, w), &cpu).map_err(t)?).map_err(t)?;
    let b1 =
        Var::from_tensor(&Tensor::zeros(opts.hidden, DType::F32, &cpu).map_err(t)?).map_err(t)?;
    let w2 =
        Var::from_tensor(&Tensor::from_vec(w2, (1, opts.hidden), &cpu).map_err(t)?).map_err(t)?;
    let b2 = Var::from_tensor(&Tensor::zeros(1, DType::F32, &cpu).map_err(t)?).map_err(t)?;
    let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
        let h = x
            .matmul(&w1.as_tensor().t()?)?
            .broadcast_add(b1.as_tensor())?
            .relu()?;
        h.matmul(&w2.as_tensor().t()?)?
            .broadcast_add(b2.as_tensor())?
            .squeeze(1)
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

    let hold_x = Tensor::from_vec(hold_set.x.clone(), (hold_set.len(), w), &cpu).map_err(t)?;
    let hold_y = Tensor::from_vec(hold_set.y.clone(), hold_set.len(), &cpu).map_err(t)?;
    let cosine_acc = best_threshold_accuracy(&hold_set.cos, &hold_set.y);
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let mut last = None;
    for epoch in 1..=opts.epochs {
        order.shuffle(&mut rng);
        let mut total = 0f64;
        for chunk in order.chunks(opts.batch) {
            let mut xb = Vec::with_capacity(chunk.len() * w);
            let mut yb = Vec::with_capacity(chunk.len());
            for &i in chunk {
                xb.extend_from_slice(&train_set.x[i * w..(i + 1) * w]);
                yb.push(train_set.y[i]);
            }
            let xb = Tensor::from_vec(xb, (chunk.len(), w), &cpu).map_err(t)?;
            let yb = Tensor::from_vec(yb, chunk.len(), &cpu).map_err(t)?;
            let loss = bce_with_logits(&forward(&xb).map_err(t)?, &yb).map_err(t)?;
            opt.backward_step(&loss).map_err(t)?;
            total += loss.to_scalar::<f32>().map_err(t)? as f64 * chunk.len() as f64;
        }
        let (holdout_loss, holdout_accuracy) = if hold_set.len() > 0 {
            let logits = forward(&hold_x).map_err(t)?;
            let loss = bce_with_logits(&logits, &hold_y)
                .and_then(|l| l.to_scalar::<f32>())
                .map_err(t)? as f64;
            let l: Vec<f32> = logits.to_vec1().map_err(t)?;
            (loss, best_threshold_accuracy(&l, &hold_set.y))
        } else {
            (f64::NAN, f64::NAN)
        };
        let r = EpochReport {
            epoch,
            train_loss: total / train_set.len() as f64,
            holdout_loss,
            holdout_accuracy,
            holdout_cosine_accuracy: cosine_acc,
        };
        progress(&r);
        last = Some(r);
    }
    let read = |v: &Var| crate::train::var_values(v).map_err(t);
    let head = EdgeHead::new(
        d,
        opts.hidden,
        read(&w1)?,
        read(&b1)?,
        read(&w2)?,
        read(&b2)?[0],
    );
    let report = last.ok_or_else(|| TrainError::Fit(PART, "no epoch ran".into()))?;
    Ok((head, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    /// Identities that differ only in dimensions 0..4 and vary strongly (within one identity) in
    /// dimensions 4..8: a cosine threshold confuses the two, a head that reads the dimensions can not.
    fn toy(seed: u64) -> (Features, Vec<i64>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let d = 8;
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for id in 0..60i64 {
            let centre: Vec<f32> = (0..4).map(|_| noise.sample(&mut rng)).collect();
            for _ in 0..4 {
                for c in &centre {
                    data.push(c + 0.05 * noise.sample(&mut rng));
                }
                for _ in 4..d {
                    data.push(0.8 * noise.sample(&mut rng));
                }
                labels.push(id);
            }
        }
        (Features { dim: d, data }, labels)
    }

    #[test]
    fn trained_head_beats_the_cosine_where_within_identity_variation_is_structured() {
        let (f, l) = toy(3);
        let opts = EdgeTraining {
            k: 8,
            hidden: 16,
            epochs: 60,
            batch: 64,
            holdout: 0.25,
            ..Default::default()
        };
        let mut epochs = 0;
        let (head, r) = train(&f, &l, &opts, &mut |_| epochs += 1).unwrap();
        assert_eq!(epochs, 60);
        assert!(r.holdout_loss.is_finite());
        assert!(
            r.holdout_accuracy > r.holdout_cosine_accuracy + 0.03,
            "head {:.3} vs cosine {:.3}",
            r.holdout_accuracy,
            r.holdout_cosine_accuracy
        );
        // The plain-Rust forward agrees with the trained logits' sign on a same/different pair.
        let u = crate::train::unit_rows(&f);
        let cos = |i: usize, j: usize| u.row(i).iter().zip(u.row(j)).map(|(a, b)| a * b).sum();
        let same = head.probability(u.row(0), u.row(1), cos(0, 1));
        let diff = head.probability(u.row(0), u.row(4), cos(0, 4));
        assert!(same > diff, "same {same} diff {diff}");
        // ... and equals the tensor forward the training used.
        let mut x = Vec::new();
        pair_input(u.row(0), u.row(4), cos(0, 4), &mut x);
        let cpu = Device::Cpu;
        let xt = Tensor::from_vec(x.clone(), (1, x.len()), &cpu).unwrap();
        let w1 = Tensor::from_vec(head.w1.clone(), (head.hidden, x.len()), &cpu).unwrap();
        let b1 = Tensor::from_vec(head.b1.clone(), head.hidden, &cpu).unwrap();
        let w2 = Tensor::from_vec(head.w2.clone(), (1, head.hidden), &cpu).unwrap();
        let h = xt
            .matmul(&w1.t().unwrap())
            .unwrap()
            .broadcast_add(&b1)
            .unwrap()
            .relu()
            .unwrap();
        let z: f32 = h
            .matmul(&w2.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
            + head.b2;
        let rust = head.logit(u.row(0), u.row(4), cos(0, 4));
        assert!((z - rust).abs() < 1e-4, "tensor {z} rust {rust}");

        // Seeded: the same input and seed give the same head.
        let (again, _) = train(&f, &l, &opts, &mut |_| {}).unwrap();
        assert_eq!(again, head);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("edge.safetensors");
        head.save(&p).unwrap();
        assert_eq!(EdgeHead::load(&p, 8).unwrap(), head);
        assert!(matches!(
            EdgeHead::load(&p, 16),
            Err(WeightsError::Shape { .. })
        ));
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(
            EdgeHead::load(&p, 8),
            Err(WeightsError::Read { .. })
        ));
    }

    #[test]
    fn training_refuses_data_without_a_same_identity_pair() {
        let f = Features {
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7, -1.0, 0.0],
        };
        let r = train(&f, &[0, 1, 2, 3], &EdgeTraining::default(), &mut |_| {});
        assert!(matches!(r, Err(TrainError::Fit(..))));
    }
}
