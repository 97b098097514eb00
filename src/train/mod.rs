//! Training the parts the clustering loads at start-up, from identity-labelled features
//! (`clip-cluster train`), apart from the inference code that uses them: the edge head (`edge`),
//! the proxy's hallucination directions (`directions`) and attention (`attention`), and the CLIP
//! mapper H (`mapper`). Each fit is seeded (one ChaCha stream for initial weights and batch order),
//! reports every epoch, and holds identities (not faces) out to report generalization; the
//! weights go out as safetensors through `crate::weights`.

pub mod attention;
pub mod directions;
pub mod edge;
pub mod mapper;

use std::collections::HashSet;

use candle_core::Var;
use rand::seq::SliceRandom;

use crate::eval::features::Features;
use crate::weights::WeightsError;

/// Why a fit did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data or the settings cannot train this part (`part` names it).
    #[error("training the {0}: {1}")]
    Fit(&'static str, String),
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// The identities held out from a fit: `fraction` of the distinct labels, drawn from `rng`.
pub fn held_out_identities(
    labels: &[i64],
    fraction: f64,
    rng: &mut impl rand::Rng,
) -> HashSet<i64> {
    let mut ids: Vec<i64> = labels.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids.shuffle(rng);
    let n = ((ids.len() as f64) * fraction).round() as usize;
    ids[..n.min(ids.len())].iter().copied().collect()
}

/// `features` with every row scaled to unit length (zero rows stay zero).
pub fn unit_rows(features: &Features) -> Features {
    let mut out = features.clone();
    for r in out.data.chunks_mut(features.dim) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v /= n);
        }
    }
    out
}

/// A trained variable's values, row-major.
pub fn var_values(v: &Var) -> candle_core::Result<Vec<f32>> {
    v.as_tensor().flatten_all()?.to_vec1::<f32>()
}
