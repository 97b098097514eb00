//! CLIP attribute hallucination in identity space (METHOD.md (c) 2): the mapper H and the
//! hallucinator that turns a face's identity vector f and CLIP image embedding c into one
//! hallucinated identity vector per attribute,
//!
//!   c_a = norm(c + lambda_a d_a)            (`prompts::hallucinate`, text direction d_a)
//!   f_a = norm(f + H([f ; c_a - c]) - H([f ; 0]))   (H: a small MLP, H = 0 gives f_a = f)
//!
//! (METHOD.md writes f + H([f ; c_a - c]); subtracting H's answer for no edit keeps only the
//! edit's effect: measured on LFW with a random-weight CLIP, without it every variant drifts
//! toward the population's centre and the graph collapses.)
//!
//! H carries an edit in CLIP's image-text space into identity space. It is learned from
//! identity-labeled faces with both embeddings (`clip-cluster train --clip-features C.bin
//! --mapper-out H.safetensors`): for two faces i, j of one person, H([f_i ; c_j - c_i]) should
//! predict f_j - f_i, how the identity vector moves when the picture changes the way CLIP sees
//! it change (age, pose, expression, light); the fit lives in `crate::train::mapper`. The output
//! layer starts at zero, so an untrained mapper is exactly H = 0.
//!
//! In the daemon, `ClipStage` runs after the identity network in roles "all" and "embed": the
//! variants travel with the face (the envelope's `hallucinated`) to the proxy generator.

pub mod clip;
pub mod prompts;

use std::path::Path;

use thiserror::Error;

use crate::hallucinate::prompts::Direction;
use crate::weights::WeightsError;

const PART: &str = "mapper";

/// H: [f (dim) ; delta_c (clip_dim)] -> hidden (ReLU) -> dim. Row-major weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapper {
    pub dim: usize,
    pub clip_dim: usize,
    pub hidden: usize,
    /// `[hidden, dim + clip_dim]`
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `[dim, hidden]`
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl Mapper {
    /// The identity-space change H predicts for `f` under the CLIP-space change `delta_c`.
    pub fn forward(&self, f: &[f32], delta_c: &[f32]) -> Vec<f32> {
        let w = self.dim + self.clip_dim;
        let mut h = vec![0f32; self.hidden];
        for (k, hk) in h.iter_mut().enumerate() {
            let row = &self.w1[k * w..(k + 1) * w];
            let z = self.b1[k]
                + crate::index::dot(&row[..self.dim], f)
                + crate::index::dot(&row[self.dim..], delta_c);
            *hk = z.max(0.0);
        }
        (0..self.dim)
            .map(|o| {
                self.b2[o] + crate::index::dot(&self.w2[o * self.hidden..(o + 1) * self.hidden], &h)
            })
            .collect()
    }

    /// Writes `mapper.w1`, `mapper.b1`, `mapper.w2`, `mapper.b2` as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let w = self.dim + self.clip_dim;
        crate::weights::write(
            path,
            &[
                ("mapper.w1", &self.w1, &[self.hidden, w]),
                ("mapper.b1", &self.b1, &[self.hidden]),
                ("mapper.w2", &self.w2, &[self.dim, self.hidden]),
                ("mapper.b2", &self.b2, &[self.dim]),
            ],
        )
        .map_err(|detail| WeightsError::Write {
            part: PART,
            path: path.display().to_string(),
            detail,
        })
    }

    /// Reads what `save` wrote, for identity vectors of `dim` and CLIP embeddings of `clip_dim`.
    pub fn load(path: &Path, dim: usize, clip_dim: usize) -> Result<Self, WeightsError> {
        let p = path.display().to_string();
        let m = crate::weights::read(path).map_err(|detail| WeightsError::Read {
            part: PART,
            path: p.clone(),
            detail,
        })?;
        let shape = |detail: String| WeightsError::Shape {
            part: PART,
            path: p.clone(),
            detail: format!(
                "{detail} (a mapper of [{dim} identity + {clip_dim} CLIP] values to {dim})"
            ),
        };
        let hidden = crate::weights::dims(&m, "mapper.w1")
            .map_err(shape)?
            .first()
            .copied()
            .unwrap_or(0);
        let get =
            |name: &str, dims: &[usize]| crate::weights::values(&m, name, dims).map_err(shape);
        Ok(Self {
            dim,
            clip_dim,
            hidden,
            w1: get("mapper.w1", &[hidden, dim + clip_dim])?,
            b1: get("mapper.b1", &[hidden])?,
            w2: get("mapper.w2", &[dim, hidden])?,
            b2: get("mapper.b2", &[dim])?,
        })
    }
}

/// Text directions (from CLIP and the prompts file) and the mapper: one hallucinated identity
/// vector per attribute.
#[derive(Debug, Clone)]
pub struct Hallucinator {
    pub directions: Vec<Direction>,
    pub mapper: Mapper,
}

pub(crate) fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl Hallucinator {
    /// f_a for every attribute, in the order of the directions. `f` is the unit identity
    /// vector, `c` the unit CLIP image embedding of the same face.
    pub fn variants(&self, f: &[f32], c: &[f32]) -> Result<Vec<Vec<f32>>, HallucinateError> {
        if f.len() != self.mapper.dim || c.len() != self.mapper.clip_dim {
            return Err(HallucinateError::Input(format!(
                "identity vector of {} and CLIP embedding of {} values; the mapper takes {} and {}",
                f.len(),
                c.len(),
                self.mapper.dim,
                self.mapper.clip_dim
            )));
        }
        // H's answer for no CLIP change (the average move of a face toward another picture of the
        // same person, i.e. toward the population's centre): the same for every attribute, and
        // taken out of each, or every variant drifts to the centre and proxies of different
        // people meet there.
        let still = self.mapper.forward(f, &vec![0f32; c.len()]);
        self.directions
            .iter()
            .map(|d| {
                if d.vector.len() != c.len() {
                    return Err(HallucinateError::Input(format!(
                        "direction `{}` has {} values, the CLIP embedding {}",
                        d.name,
                        d.vector.len(),
                        c.len()
                    )));
                }
                let ca = crate::hallucinate::prompts::hallucinate(c, d);
                let delta: Vec<f32> = ca.iter().zip(c).map(|(a, b)| a - b).collect();
                // The edit's own effect.
                let moved = self.mapper.forward(f, &delta);
                let mut fa: Vec<f32> = f
                    .iter()
                    .zip(moved.iter().zip(&still))
                    .map(|(x, (m, s))| x + m - s)
                    .collect();
                unit(&mut fa);
                Ok(fa)
            })
            .collect()
    }
}

/// CLIP, its text directions and the mapper, loaded together: what an embedding stage runs on
/// each batch of images once their identity vectors exist (`[clip]` with `mapper_path`).
pub struct ClipStage {
    pub clip: crate::hallucinate::clip::Clip,
    pub hallucinator: Hallucinator,
}

/// Why hallucination cannot start or cannot run on an input.
#[derive(Debug, Error)]
pub enum HallucinateError {
    #[error(transparent)]
    Clip(#[from] crate::hallucinate::clip::ClipError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("clip.weights is set but clip.mapper_path is empty: the daemon needs the mapper H (clip-cluster train --clip-features C.bin --mapper-out H.safetensors) to turn CLIP edits into identity variants")]
    NoMapper,
    #[error("hallucination: {0}")]
    Input(String),
}

impl ClipStage {
    /// `None` when `[clip]` is off (empty `weights`). Every file is read and checked here, so
    /// a bad one stops start-up with its name.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Self>, HallucinateError> {
        Self::new(&cfg.clip, cfg.model.dim)
    }

    /// As `from_config`, from `[clip]` and the identity vectors' width.
    pub fn new(
        c: &crate::config::ClipConfig,
        dim: usize,
    ) -> Result<Option<Self>, HallucinateError> {
        if !c.enabled() {
            return Ok(None);
        }
        if c.mapper_path.as_os_str().is_empty() {
            return Err(HallucinateError::NoMapper);
        }
        let Some((clip, directions)) = crate::hallucinate::clip::from_config(c)? else {
            return Ok(None);
        };
        let clip_dim = clip.model().architecture().embed_dim;
        let mapper = Mapper::load(&c.mapper_path, dim, clip_dim)?;
        Ok(Some(Self {
            clip,
            hallucinator: Hallucinator { directions, mapper },
        }))
    }

    /// Variants per attribute of the directions.
    pub fn n_variants(&self) -> usize {
        self.hallucinator.directions.len()
    }

    /// For each decoded image whose identity vector is given (`None`: it did not decode or
    /// embed), its hallucinated variants, row after row; others get none (the face is still
    /// clustered, on its learned-direction variants). The pixels are the ones the identity
    /// network saw, decoded once within the configured limits. Err: CLIP itself failed (device).
    pub fn variants(
        &self,
        images: &[Option<&crate::embed::image::RgbImage>],
        identities: &[Option<&[f32]>],
    ) -> Result<Vec<Vec<f32>>, crate::hallucinate::clip::ClipError> {
        let mut out = vec![Vec::new(); images.len()];
        let mut which = Vec::new();
        let mut decoded = Vec::new();
        for (i, (rgb, f)) in images.iter().zip(identities).enumerate() {
            let (Some(rgb), Some(_)) = (rgb, f) else {
                continue;
            };
            if let Some(img) =
                image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.pixels.clone())
            {
                which.push(i);
                decoded.push(img);
            }
        }
        if decoded.is_empty() {
            return Ok(out);
        }
        let cs = self.clip.encode_images(&decoded)?;
        for (i, c) in which.into_iter().zip(cs) {
            let Some(f) = identities[i] else { continue };
            let mut unit_f = f.to_vec();
            unit(&mut unit_f);
            // Shapes were checked at start-up; a mismatch here leaves the face without variants.
            if let Ok(v) = self.hallucinator.variants(&unit_f, &c) {
                out[i] = v.concat();
            }
        }
        Ok(out)
    }
}
