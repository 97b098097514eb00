//! Fitting the proxy attention's W_q, W_k (`crate::proxy::attention::Attention`).
//!
//! Training (`clip-cluster train --attention-out`): for every labeled face, its candidates
//! (the face and its hallucinated variants, with the configured directions and strength), its
//! context q (similarity-weighted mean of its `context_k` nearest other faces) and its `k`
//! nearest other faces as the edges the engine would consider. The loss is the edge decision
//! itself: binary cross-entropy of `scale * (cos(p, f_j) - t1)` against "same identity", so the
//! proxy p learns to move toward its own identity's faces past the engine's threshold and away
//! from other identities'. Identities are split into a fitted and a held-out part (reported per
//! epoch, with the identity attention's numbers as the bar). Seeded and deterministic.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::TrainError;
use crate::eval::features::Features;
use crate::proxy::attention::Attention;
use crate::proxy::NeighborProxy;
#[cfg(test)]
use crate::weights::WeightsError;

const PART: &str = "attention";

/// Settings of `train --attention-out`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionTraining {
    /// Edges per face the loss looks at.
    pub k: usize,
    /// The engine threshold the loss places the decision at.
    pub t1: f32,
    /// Sharpness of the decision (logit per unit of cosine).
    pub scale: f32,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    /// Pulls W_q, W_k toward I (not toward 0): the default is a good start.
    pub weight_decay_to_identity: f64,
    pub holdout: f64,
    pub seed: u64,
}

impl Default for AttentionTraining {
    fn default() -> Self {
        Self {
            k: 10,
            t1: 0.95,
            scale: 100.0,
            epochs: 15,
            batch: 256,
            learning_rate: 1e-3,
            weight_decay_to_identity: 1e-3,
            holdout: 0.1,
            seed: 1,
        }
    }
}

/// One epoch's numbers; accuracies are of the edge decision cos(p, f_j) > t1 on held-out faces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionEpoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub holdout_loss: f64,
    pub holdout_accuracy: f64,
    /// The same with W_q = W_k = I (the bar to clear).
    pub holdout_identity_accuracy: f64,
}

/// Per-face training inputs, flattened.
struct Set {
    n: usize,
    /// [n, c, d]
    cands: Vec<f32>,
    /// [n, d]
    q: Vec<f32>,
    /// [n, k, d]
    nb: Vec<f32>,
    /// [n, k]
    y: Vec<f32>,
}

/// Trains W_q, W_k for `proxy` (its directions, strength, temperature and context size) on the
/// identity-labeled `features`.
pub fn train(
    features: &Features,
    labels: &[i64],
    proxy: &NeighborProxy,
    opts: &AttentionTraining,
    progress: &mut dyn FnMut(&AttentionEpoch),
) -> Result<(Attention, AttentionEpoch), TrainError> {
    let d = features.dim;
    let n = features.n();
    let t = |e: candle_core::Error| TrainError::Fit(PART, e.to_string());
    if labels.len() != n {
        return Err(TrainError::Fit(
            PART,
            format!("{} labels for {n} rows", labels.len()),
        ));
    }
    if proxy.directions.is_none() {
        return Err(TrainError::Fit(
            PART,
            "the proxy has no hallucination directions: there is nothing to attend over".into(),
        ));
    }
    if n <= opts.k.max(proxy.context_k) || opts.epochs == 0 || opts.batch == 0 {
        return Err(TrainError::Fit(PART, format!(
            "need more faces than k and context_k, and positive epochs and batch (got {n} faces, {opts:?})"
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let held = crate::train::held_out_identities(labels, opts.holdout, &mut rng);

    let unit = crate::train::unit_rows(features);
    let kk = opts.k.max(proxy.context_k);
    let mut sets = Vec::new();
    for part in [false, true] {
        let rows: Vec<usize> = (0..n)
            .filter(|&i| held.contains(&labels[i]) == part)
            .collect();
        let mut set = Set {
            n: 0,
            cands: Vec::new(),
            q: Vec::new(),
            nb: Vec::new(),
            y: Vec::new(),
        };
        if rows.len() > kk {
            let mut sub = Vec::with_capacity(rows.len() * d);
            for &i in &rows {
                sub.extend_from_slice(unit.row(i));
            }
            let sub = Features { dim: d, data: sub };
            let knn = crate::eval::knn::brute_force(&sub, kk);
            for (a, list) in knn.neighbors.iter().enumerate() {
                if list.len() < kk {
                    continue;
                }
                let i = rows[a];
                let mut q = vec![0f32; d];
                for &(b, s) in list.iter().take(proxy.context_k) {
                    let w = s.max(0.0);
                    for (qi, v) in q.iter_mut().zip(sub.row(b as usize)) {
                        *qi += w * v;
                    }
                }
                let s = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                if s <= 0.0 {
                    continue;
                }
                q.iter_mut().for_each(|v| *v /= s);
                for c in proxy.candidates(unit.row(i)) {
                    set.cands.extend_from_slice(&c);
                }
                set.q.extend_from_slice(&q);
                for &(b, _) in list.iter().take(opts.k) {
                    set.nb.extend_from_slice(sub.row(b as usize));
                    set.y.push(if labels[rows[b as usize]] == labels[i] {
                        1.0
                    } else {
                        0.0
                    });
                }
                set.n += 1;
            }
        }
        sets.push(set);
    }
    let (fit, hold) = (&sets[0], &sets[1]);
    if fit.n == 0 || !fit.y.iter().any(|v| *v > 0.5) {
        return Err(TrainError::Fit(
            PART,
            "no face has a same-identity neighbour: need identities with two or more faces".into(),
        ));
    }
    let c = fit.cands.len() / (fit.n * d);
    let k = opts.k;

    let cpu = Device::Cpu;
    let eye = Tensor::eye(d, DType::F32, &cpu).map_err(t)?;
    let w_q = Var::from_tensor(&eye).map_err(t)?;
    let w_k = Var::from_tensor(&eye).map_err(t)?;
    let temperature = proxy.temperature as f64;
    let forward = |wq: &Tensor,
                   wk: &Tensor,
                   cands: &Tensor,
                   q: &Tensor,
                   nb: &Tensor,
                   y: &Tensor|
     -> candle_core::Result<(Tensor, Tensor)> {
        let b = q.dim(0)?;
        // r = W_k^T W_q q, per row: q W_q^T W_k.
        let r = q.matmul(&wq.t()?)?.matmul(wk)?; // [b, d]
        let logits = (cands.matmul(&r.unsqueeze(2)?)?.squeeze(2)? / temperature)?; // [b, c]
        let alpha = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let p = alpha.unsqueeze(1)?.matmul(cands)?.squeeze(1)?; // [b, d]
        let p = p.broadcast_div(&p.sqr()?.sum_keepdim(1)?.sqrt()?)?;
        let sims = nb.matmul(&p.unsqueeze(2)?)?.squeeze(2)?; // [b, k]
        let z = ((sims - opts.t1 as f64)? * opts.scale as f64)?;
        let relu = z.relu()?;
        let zy = (&z * y)?;
        let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
        let loss = ((relu - zy)? + soft)?.mean_all()?;
        let _ = b;
        Ok((loss, z))
    };
    let tensors = |s: &Set, rows: &[usize]| -> candle_core::Result<[Tensor; 4]> {
        let mut cv = Vec::with_capacity(rows.len() * c * d);
        let mut qv = Vec::with_capacity(rows.len() * d);
        let mut nv = Vec::with_capacity(rows.len() * k * d);
        let mut yv = Vec::with_capacity(rows.len() * k);
        for &i in rows {
            cv.extend_from_slice(&s.cands[i * c * d..(i + 1) * c * d]);
            qv.extend_from_slice(&s.q[i * d..(i + 1) * d]);
            nv.extend_from_slice(&s.nb[i * k * d..(i + 1) * k * d]);
            yv.extend_from_slice(&s.y[i * k..(i + 1) * k]);
        }
        let b = rows.len();
        Ok([
            Tensor::from_vec(cv, (b, c, d), &cpu)?,
            Tensor::from_vec(qv, (b, d), &cpu)?,
            Tensor::from_vec(nv, (b, k, d), &cpu)?,
            Tensor::from_vec(yv, (b, k), &cpu)?,
        ])
    };
    let accuracy = |z: &Tensor, y: &Tensor| -> candle_core::Result<f64> {
        let z: Vec<f32> = z.flatten_all()?.to_vec1()?;
        let y: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let ok = z
            .iter()
            .zip(&y)
            .filter(|(a, b)| (**a > 0.0) == (**b > 0.5))
            .count();
        Ok(ok as f64 / z.len().max(1) as f64)
    };
    let hold_t = if hold.n > 0 {
        Some(tensors(hold, &(0..hold.n).collect::<Vec<_>>()).map_err(t)?)
    } else {
        None
    };
    let identity_acc = match &hold_t {
        Some([hc, hq, hn, hy]) => {
            let (_, z) = forward(&eye, &eye, hc, hq, hn, hy).map_err(t)?;
            accuracy(&z, hy).map_err(t)?
        }
        None => f64::NAN,
    };
    let mut opt = AdamW::new(
        vec![w_q.clone(), w_k.clone()],
        ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(t)?;
    let mut order: Vec<usize> = (0..fit.n).collect();
    let mut last = None;
    for epoch in 1..=opts.epochs {
        order.shuffle(&mut rng);
        let mut total = 0f64;
        for rows in order.chunks(opts.batch) {
            let step = || -> candle_core::Result<(Tensor, f64)> {
                let [bc, bq, bn, by] = tensors(fit, rows)?;
                let (loss, _) = forward(w_q.as_tensor(), w_k.as_tensor(), &bc, &bq, &bn, &by)?;
                let value = loss.to_scalar::<f32>()? as f64;
                // Decay toward the identity, not toward zero.
                let reg = ((w_q.as_tensor() - &eye)?.sqr()?.sum_all()?
                    + (w_k.as_tensor() - &eye)?.sqr()?.sum_all()?)?;
                Ok(((loss + (reg * opts.weight_decay_to_identity)?)?, value))
            };
            let (objective, value) = step().map_err(t)?;
            total += value * rows.len() as f64;
            opt.backward_step(&objective).map_err(t)?;
        }
        let (holdout_loss, holdout_accuracy) = match &hold_t {
            Some([hc, hq, hn, hy]) => {
                let (l, z) =
                    forward(w_q.as_tensor(), w_k.as_tensor(), hc, hq, hn, hy).map_err(t)?;
                (
                    l.to_scalar::<f32>().map_err(t)? as f64,
                    accuracy(&z, hy).map_err(t)?,
                )
            }
            None => (f64::NAN, f64::NAN),
        };
        let r = AttentionEpoch {
            epoch,
            train_loss: total / fit.n as f64,
            holdout_loss,
            holdout_accuracy,
            holdout_identity_accuracy: identity_acc,
        };
        progress(&r);
        last = Some(r);
    }
    let read = |v: &Var| crate::train::var_values(v).map_err(t);
    let att = Attention {
        dim: d,
        w_q: read(&w_q)?,
        w_k: read(&w_k)?,
    };
    let report = last.ok_or_else(|| TrainError::Fit(PART, "no epoch ran".into()))?;
    Ok((att, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ProxyGenerator;
    use crate::index::Neighbor;
    use rand_distr::{Distribution, Normal};

    fn toy() -> (Features, Vec<i64>, NeighborProxy) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let d = 8;
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for id in 0..40i64 {
            let centre: Vec<f32> = (0..d).map(|_| noise.sample(&mut rng)).collect();
            for _ in 0..4 {
                // Within one identity the faces vary mostly along axis 0.
                for (j, c) in centre.iter().enumerate() {
                    let s = if j == 0 { 0.6 } else { 0.08 };
                    data.push(c + s * noise.sample(&mut rng));
                }
                labels.push(id);
            }
        }
        let f = Features { dim: d, data };
        let directions = crate::train::directions::learn_directions(&f, &labels, 2).unwrap();
        let proxy = NeighborProxy {
            directions: Some(directions),
            strength: 2.0,
            temperature: 0.05,
            context_k: 4,
            min_neighbors: 1,
            with_context: false,
            attention: None,
        };
        (f, labels, proxy)
    }

    #[test]
    fn identity_attention_is_the_parameter_free_proxy() {
        let (f, _, proxy) = toy();
        let q = f.row(1).to_vec();
        assert_eq!(Attention::identity(8).query(&q), q);
        let with = NeighborProxy {
            attention: Some(Attention::identity(8)),
            ..proxy.clone()
        };
        let mut unit = f.row(0).to_vec();
        let s = unit.iter().map(|v| v * v).sum::<f32>().sqrt();
        unit.iter_mut().for_each(|v| *v /= s);
        let nb = [Neighbor {
            seq: 0,
            similarity: 0.9,
        }];
        let read = |_: u32| {
            let mut v = f.row(2).to_vec();
            let s = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= s);
            v
        };
        let a = proxy.proxy(&unit, &[], &nb, &read).unwrap();
        let b = with.proxy(&unit, &[], &nb, &read).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn training_is_seeded_learns_and_round_trips() {
        let (f, l, proxy) = toy();
        let opts = AttentionTraining {
            k: 4,
            t1: 0.8,
            scale: 20.0,
            epochs: 8,
            batch: 32,
            learning_rate: 1e-2,
            holdout: 0.25,
            ..Default::default()
        };
        let mut losses = Vec::new();
        let (att, r) = train(&f, &l, &proxy, &opts, &mut |e| losses.push(e.train_loss)).unwrap();
        assert_eq!(losses.len(), 8);
        assert!(r.holdout_loss.is_finite() && r.holdout_accuracy > 0.5);
        assert!(
            losses[7] < losses[0],
            "the training loss goes down: {losses:?}"
        );
        assert_ne!(att, Attention::identity(8), "the weights moved");
        let (again, _) = train(&f, &l, &proxy, &opts, &mut |_| {}).unwrap();
        assert_eq!(again, att, "same seed, same weights");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("att.safetensors");
        att.save(&p).unwrap();
        assert_eq!(Attention::load(&p, 8).unwrap(), att);
        assert!(matches!(
            Attention::load(&p, 16),
            Err(WeightsError::Shape { .. })
        ));
        std::fs::write(&p, b"not safetensors").unwrap();
        assert!(matches!(
            Attention::load(&p, 8),
            Err(WeightsError::Read { .. })
        ));
        // No directions: nothing to attend over.
        let bare = NeighborProxy {
            directions: None,
            ..proxy
        };
        assert!(matches!(
            train(&f, &l, &bare, &opts, &mut |_| {}),
            Err(TrainError::Fit(..))
        ));
    }
}
