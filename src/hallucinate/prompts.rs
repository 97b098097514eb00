//! Attribute prompts and the text directions they give in CLIP's joint space (METHOD.md (c) step 2).
//!
//! An operator writes attribute pairs in plain language (`config/prompts.toml`): a neutral prompt
//! s_a, an attribute prompt t_a and a strength lambda_a. At start-up the text tower encodes every
//! prompt once and each pair becomes a unit direction
//! `d_a = normalize(normalize(T(t_a)) - normalize(T(s_a)))` (the texts are compared as CLIP compares
//! them, on the unit sphere). A face's CLIP image embedding c is then hallucinated per attribute as
//! `c_a = normalize(c + lambda_a * d_a)` ([`hallucinate`]).
//!
//! This module does no inference: [`Prompts::directions`] takes the text encoder as a function, so
//! it is tested without a model and `clip::Clip::directions` plugs the real one in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PromptsError {
    #[error("cannot read the prompts file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("prompts file {path} does not parse: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("prompts file {path}, line {line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("attribute `{name}`: {reason}")]
    Direction { name: String, reason: String },
}

/// One attribute pair, as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributePrompt {
    /// Short name used in logs, metrics labels and model files (`age`, `pose`...).
    pub name: String,
    /// The prompt describing the face without the attribute (s_a).
    pub neutral: String,
    /// The prompt describing the face with the attribute (t_a).
    pub attribute: String,
    /// lambda_a: how far along the direction the hallucinated embedding moves (c is a unit vector).
    pub strength: f32,
}

/// The validated prompts file.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    /// Where the prompts came from, for messages.
    pub source: PathBuf,
    pub attributes: Vec<AttributePrompt>,
}

/// One hallucination direction: what the proxy generator consumes, whatever made it (CLIP text
/// prompts here, learned directions elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub struct Direction {
    pub name: String,
    /// Unit vector in the space it edits (CLIP's joint space for text directions).
    pub vector: Vec<f32>,
    /// lambda_a, carried from the prompts file.
    pub strength: f32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    attribute: Vec<RawAttribute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttribute {
    name: toml::Spanned<String>,
    neutral: toml::Spanned<String>,
    attribute: toml::Spanned<String>,
    strength: toml::Spanned<f64>,
}

/// Largest strength accepted: beyond a few unit lengths c_a is the direction itself, not an edit of c.
const MAX_STRENGTH: f64 = 4.0;

impl Prompts {
    pub fn load(path: &Path) -> Result<Self, PromptsError> {
        let text = std::fs::read_to_string(path).map_err(|e| PromptsError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `path` only names the source in messages. Every error names the file
    /// and, from the TOML parser or the value's span, the line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PromptsError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| PromptsError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let line_of = |span: std::ops::Range<usize>| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        };
        let invalid = |span: std::ops::Range<usize>, reason: String| PromptsError::Invalid {
            path: path.to_path_buf(),
            line: line_of(span),
            reason,
        };
        if raw.attribute.is_empty() {
            return Err(invalid(
                0..0,
                "no [[attribute]] entries; write at least one pair, or disable CLIP".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut attributes = Vec::with_capacity(raw.attribute.len());
        for a in raw.attribute {
            let name = a.name.get_ref().trim().to_string();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    a.name.span(),
                    format!(
                        "name {:?} must be non-empty ASCII letters, digits, '_' or '-'",
                        a.name.get_ref()
                    ),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    a.name.span(),
                    format!("attribute `{name}` is defined twice"),
                ));
            }
            for field in [&a.neutral, &a.attribute] {
                if field.get_ref().trim().is_empty() {
                    return Err(invalid(
                        field.span(),
                        format!("attribute `{name}`: the prompt is empty"),
                    ));
                }
            }
            if a.neutral.get_ref().trim() == a.attribute.get_ref().trim() {
                return Err(invalid(
                    a.attribute.span(),
                    format!("attribute `{name}`: neutral and attribute prompts are the same, so there is no direction"),
                ));
            }
            let s = *a.strength.get_ref();
            if !(s.is_finite() && s > 0.0 && s <= MAX_STRENGTH) {
                return Err(invalid(
                    a.strength.span(),
                    format!("attribute `{name}`: strength {s} must be in (0, {MAX_STRENGTH}]"),
                ));
            }
            attributes.push(AttributePrompt {
                name,
                neutral: a.neutral.into_inner(),
                attribute: a.attribute.into_inner(),
                strength: s as f32,
            });
        }
        Ok(Self {
            source: path.to_path_buf(),
            attributes,
        })
    }

    /// Every prompt in file order: neutral then attribute, per pair (what `directions` encodes).
    pub fn texts(&self) -> Vec<&str> {
        self.attributes
            .iter()
            .flat_map(|a| [a.neutral.as_str(), a.attribute.as_str()])
            .collect()
    }

    /// The directions, with `encode` the text tower (one embedding per text, any scale). Errors
    /// from `encode` pass through; a pair whose two embeddings coincide is refused.
    pub fn directions<E>(
        &self,
        encode: impl FnOnce(&[&str]) -> Result<Vec<Vec<f32>>, E>,
    ) -> Result<Vec<Direction>, E>
    where
        E: From<PromptsError>,
    {
        let texts = self.texts();
        let embeddings = encode(&texts)?;
        if embeddings.len() != texts.len() {
            return Err(PromptsError::Direction {
                name: "*".into(),
                reason: format!(
                    "the text encoder returned {} embeddings for {} prompts",
                    embeddings.len(),
                    texts.len()
                ),
            }
            .into());
        }
        self.attributes
            .iter()
            .zip(embeddings.chunks(2))
            .map(|(a, pair)| {
                let vector = text_direction(&pair[0], &pair[1]).map_err(|reason| {
                    PromptsError::Direction {
                        name: a.name.clone(),
                        reason,
                    }
                })?;
                Ok(Direction {
                    name: a.name.clone(),
                    vector,
                    strength: a.strength,
                })
            })
            .collect()
    }
}

/// `normalize(normalize(attribute) - normalize(neutral))`, in f64.
pub fn text_direction(neutral: &[f32], attribute: &[f32]) -> Result<Vec<f32>, String> {
    if neutral.len() != attribute.len() || neutral.is_empty() {
        return Err(format!(
            "embeddings of lengths {} and {}",
            neutral.len(),
            attribute.len()
        ));
    }
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let (ns, na) = (norm(neutral), norm(attribute));
    if !(ns > 0.0 && na > 0.0 && ns.is_finite() && na.is_finite()) {
        return Err("a prompt's text embedding is zero or not finite".into());
    }
    let diff: Vec<f64> = neutral
        .iter()
        .zip(attribute)
        .map(|(&s, &t)| t as f64 / na - s as f64 / ns)
        .collect();
    let nd = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
    if nd.is_nan() || nd <= 1e-6 {
        return Err("the neutral and attribute prompts embed to the same point".into());
    }
    Ok(diff.iter().map(|x| (x / nd) as f32).collect())
}

/// `c_a = normalize(c + strength * d)`: the hallucinated CLIP embedding of a face for one attribute.
/// `c` need not be normalized (it usually is). A zero result (c = -strength * d) returns `c`
/// normalized unchanged rather than NaN.
pub fn hallucinate(c: &[f32], d: &Direction) -> Vec<f32> {
    assert_eq!(
        c.len(),
        d.vector.len(),
        "image embedding and direction live in the same space"
    );
    let v: Vec<f64> = c
        .iter()
        .zip(&d.vector)
        .map(|(&c, &d_)| c as f64 + d.strength as f64 * d_ as f64)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 1e-12 {
        v.iter().map(|x| (x / n) as f32).collect()
    } else {
        let n = c
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        c.iter().map(|&x| (x as f64 / n) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Prompts, PromptsError> {
        Prompts::parse(text, Path::new("p.toml"))
    }

    const GOOD: &str = r#"
[[attribute]]
name = "age"
neutral = "a photo of a young person's face"
attribute = "a photo of an old person's face"
strength = 0.5

[[attribute]]
name = "smile"
neutral = "a photo of a face with a neutral expression"
attribute = "a photo of a smiling face"
strength = 1
"#;

    #[test]
    fn the_shipped_prompts_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prompts.toml");
        let p = Prompts::load(&path).unwrap();
        assert!(p.attributes.len() >= 3);
        let names: Vec<&str> = p.attributes.iter().map(|a| a.name.as_str()).collect();
        for want in ["age", "pose", "expression"] {
            assert!(names.contains(&want), "{names:?}");
        }
    }

    #[test]
    fn pairs_parse_in_order() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.attributes.len(), 2);
        assert_eq!(p.attributes[1].name, "smile");
        assert_eq!(p.attributes[1].strength, 1.0);
        assert_eq!(p.texts().len(), 4);
        assert_eq!(p.texts()[1], "a photo of an old person's face");
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let cases = [
            (GOOD.replace("strength = 1\n", "strength = -1\n"), "line 12"),
            (GOOD.replace("name = \"smile\"", "name = \"age\""), "line 9"),
            (
                GOOD.replace(
                    "a photo of a smiling face",
                    "a photo of a face with a neutral expression",
                ),
                "line 11",
            ),
            (
                GOOD.replace("strength = 1\n", "strength = 1\nweight = 2\n"),
                "line 13",
            ),
            (GOOD.replace("strength = 1\n", "strength = \n"), "line 12"),
            (
                GOOD.replace("neutral = \"a photo of a face", "neutral = \"  \" #"),
                "line 10",
            ),
            ("# nothing\n".to_string(), "no [[attribute]]"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("p.toml") && e.contains(want), "want {want}: {e}");
        }
    }

    #[test]
    fn directions_are_unit_differences_of_unit_texts() {
        let p = parse(GOOD).unwrap();
        let dirs = p
            .directions(|texts| {
                Ok::<_, PromptsError>(
                    texts
                        .iter()
                        .enumerate()
                        .map(|(i, _)| {
                            let mut v = vec![0.0f32; 3];
                            v[i % 3] = (i + 1) as f32; // scale must not matter
                            v
                        })
                        .collect(),
                )
            })
            .unwrap();
        assert_eq!(dirs.len(), 2);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert_eq!(dirs[0].name, "age");
        assert!((dirs[0].vector[0] + s).abs() < 1e-6 && (dirs[0].vector[1] - s).abs() < 1e-6);
        assert_eq!(dirs[0].strength, 0.5);
        let e = p
            .directions(|_| Ok::<_, PromptsError>(vec![vec![1.0, 0.0]; 4]))
            .unwrap_err();
        assert!(e.to_string().contains("age"), "{e}");
    }

    #[test]
    fn hallucination_moves_along_the_direction_and_stays_unit() {
        let d = Direction {
            name: "x".into(),
            vector: vec![0.0, 1.0],
            strength: 1.0,
        };
        let c = hallucinate(&[1.0, 0.0], &d);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c[0] - s).abs() < 1e-6 && (c[1] - s).abs() < 1e-6);
        let back = hallucinate(&[0.0, -1.0], &d);
        assert!(back.iter().all(|x| x.is_finite()));
    }
}
