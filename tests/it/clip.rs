//! Golden tests for CLIP (towers, preprocessing, tokenizer, directions) against
//! `tests/fixtures/clip/reference.json`, written by the independent numpy reference
//! `tools/clip/reference.py` from the random-weight model `clip_tiny.safetensors` beside it; and
//! the typed errors for bad weights, vocabularies and architectures.
//!
//! The towers' tests need only the committed fixture; the tokenizer's need the BPE vocabulary
//! (`tools/clip/fetch_vocab.sh`) and are skipped without it, unless CLIP_CLUSTER_REQUIRE_MODELS is
//! set (CI), when they fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clip_cluster::hallucinate::clip::image::resize_and_crop;
use clip_cluster::hallucinate::clip::tokenizer::{ClipTokenizer, TokenizerError, CONTEXT};
use clip_cluster::hallucinate::clip::{
    random_tensors, Activation, Clip, ClipArchitecture, ClipError, ClipModel, TowerShape,
};
use clip_cluster::hallucinate::prompts::{hallucinate, Prompts};
use image::RgbImage;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn fixture() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture_dir().join("reference.json")).unwrap()).unwrap()
}

fn weights() -> PathBuf {
    fixture_dir().join("clip_tiny.safetensors")
}

fn arch(activation: Activation) -> ClipArchitecture {
    let mut a =
        ClipArchitecture::from_open_clip_json(&fixture_dir().join("clip_tiny.json")).unwrap();
    assert_eq!(
        a.activation,
        Activation::QuickGelu,
        "the fixture says quick_gelu"
    );
    a.activation = activation;
    a
}

fn vocab() -> Option<PathBuf> {
    let dir = std::env::var_os("CLIP_CLUSTER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let path = dir.join("bpe_simple_vocab_16e6.txt.gz");
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "no CLIP vocabulary at {} (run tools/clip/fetch_vocab.sh)",
        path.display()
    );
    assert!(
        std::env::var_os("CLIP_CLUSTER_REQUIRE_MODELS").is_none(),
        "{msg}"
    );
    eprintln!("SKIP: {msg}");
    None
}

/// The fixture's formula images (tools/clip/reference.py `synthetic`).
fn synthetic(name: &str) -> RgbImage {
    let (w, h) = if name == "synthetic_a" {
        (40, 36)
    } else {
        (29, 45)
    };
    RgbImage::from_fn(w, h, |c, r| {
        let (r, c) = (r as usize, c as usize);
        image::Rgb(std::array::from_fn(|ch| {
            (if name == "synthetic_a" {
                (7 * r + 3 * c + 60 * ch + (r * c) % 13) % 256
            } else {
                (r * r + 5 * c * ch + 11 * c + 90 * ch) % 256
            }) as u8
        }))
    })
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn max_diff(want: &[f64], got: &[f32]) -> f64 {
    assert_eq!(want.len(), got.len());
    want.iter()
        .zip(got)
        .map(|(w, g)| (w - *g as f64).abs())
        .fold(0.0, f64::max)
}

#[test]
fn clip_towers_match_the_numpy_reference_to_1e4() {
    let fx = fixture();
    for (activation, key) in [
        (Activation::QuickGelu, "embedding"),
        (Activation::Gelu, "embedding_gelu"),
    ] {
        let model = ClipModel::load(&weights(), Some(&arch(activation)), &Device::Cpu).unwrap();
        // Images: Pillow-exact preprocessing, then the vision tower.
        let entries = fx["images"].as_array().unwrap();
        let images: Vec<RgbImage> = entries
            .iter()
            .map(|e| synthetic(e["name"].as_str().unwrap()))
            .collect();
        for (e, img) in entries.iter().zip(&images) {
            assert_eq!(img.width() as u64, e["width"].as_u64().unwrap());
            let want: Vec<u8> = e["preprocessed_rgb"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(
                resize_and_crop(img, 32).as_raw(),
                &want,
                "{}: resize+crop differs from Pillow",
                e["name"]
            );
        }
        let got = model
            .image_features(&model.pixels(&images).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (e, g) in entries.iter().zip(&got) {
            let d = max_diff(&floats(&e[key]), g);
            eprintln!("{activation:?} image {}: max abs diff {d:.2e}", e["name"]);
            assert!(d <= 1e-4, "{}: {d}", e["name"]);
        }
        // One image alone equals its row in the batch.
        let alone = model
            .image_features(&model.pixels(&images[1..]).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(
            max_diff(
                &got[1].iter().map(|&x| x as f64).collect::<Vec<_>>(),
                &alone[0]
            ) <= 1e-5
        );
        // Texts: the reference's token ids through the text tower (no vocabulary needed).
        let ids: Vec<Vec<u32>> = fx["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        let got = model.text_features(&ids).unwrap().to_vec2::<f32>().unwrap();
        for (e, g) in fx["texts"].as_array().unwrap().iter().zip(&got) {
            let d = max_diff(&floats(&e[key]), g);
            eprintln!(
                "{activation:?} text {:?}: max abs diff {d:.2e}",
                e["text"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .take(20)
                    .collect::<String>()
            );
            assert!(d <= 1e-4, "{}: {d}", e["text"]);
        }
    }
}

#[test]
fn clip_tokenizer_matches_the_reference_ids() {
    let Some(vocab) = vocab() else { return };
    let tok = ClipTokenizer::load(&vocab).unwrap();
    assert_eq!(
        tok.n_tokens(),
        clip_cluster::hallucinate::clip::tokenizer::VOCAB_SIZE
    );
    let fx = fixture();
    for t in fx["tokens"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let want: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.tokenize(text, CONTEXT), want, "{text:?}");
    }
}

#[test]
fn clip_directions_and_hallucination_match_the_reference() {
    let Some(vocab) = vocab() else { return };
    let clip = Clip::load(
        &weights(),
        &vocab,
        Some(&arch(Activation::QuickGelu)),
        &Device::Cpu,
    )
    .unwrap();
    let fx = fixture();
    let d = &fx["direction"];
    let toml = format!(
        "[[attribute]]\nname = \"age\"\nneutral = {}\nattribute = {}\nstrength = 0.5\n",
        d["neutral"], d["attribute"]
    );
    let prompts = Prompts::parse(&toml, Path::new("inline.toml")).unwrap();
    let dirs = clip.directions(&prompts).unwrap();
    assert_eq!(dirs.len(), 1);
    let diff = max_diff(&floats(&d["vector"]), &dirs[0].vector);
    eprintln!("direction: max abs diff {diff:.2e}");
    assert!(diff <= 1e-4, "{diff}");
    // The image embeddings are unit vectors, and hallucination keeps them so while moving them
    // towards the direction.
    let images = [synthetic("synthetic_a")];
    let c = &clip.encode_images(&images).unwrap()[0];
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm(c) - 1.0).abs() < 1e-5);
    let ca = hallucinate(c, &dirs[0]);
    assert!((norm(&ca) - 1.0).abs() < 1e-5);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(dot(&ca, &dirs[0].vector) > dot(c, &dirs[0].vector));
    // The shipped prompts file goes through end to end.
    let shipped =
        Prompts::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/prompts.toml"))
            .unwrap();
    let dirs = clip.directions(&shipped).unwrap();
    assert_eq!(dirs.len(), shipped.attributes.len());
    assert!(dirs.iter().all(|d| (norm(&d.vector) - 1.0).abs() < 1e-5));
}

#[test]
fn clip_starts_from_its_config_section() {
    let cfg = clip_cluster::config::Config::load_from(None, &[]).unwrap();
    assert!(!cfg.clip.enabled(), "CLIP is off by default");
    assert!(clip_cluster::hallucinate::clip::from_config(&cfg.clip)
        .unwrap()
        .is_none());
    let Some(vocab) = vocab() else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut c = cfg.clip.clone();
    c.weights = weights();
    c.model_config = fixture_dir().join("clip_tiny.json");
    c.vocab = vocab;
    c.prompts = root.join("config/prompts.toml");
    let (clip, dirs) = clip_cluster::hallucinate::clip::from_config(&c)
        .unwrap()
        .unwrap();
    assert_eq!(clip.model().architecture().embed_dim, 16);
    assert_eq!(dirs[0].name, "age");
    // A prompts file that does not parse stops start-up, naming the file and the line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-prompts.toml");
    std::fs::write(
        &bad,
        "[[attribute]]\nname = \"age\"\nneutral = \"a\"\nattribute = \"b\"\nstrength = oops\n",
    )
    .unwrap();
    c.prompts = bad;
    let e = clip_cluster::hallucinate::clip::from_config(&c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad-prompts.toml") && e.contains("line 5"),
        "{e}"
    );
}

/// Writes the fixture's tensors, edited, to a temporary safetensors file.
fn edited(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut t = candle_core::safetensors::load(weights(), &Device::Cpu).unwrap();
    edit(&mut t);
    let path = dir.join("edited.safetensors");
    candle_core::safetensors::save(&t, &path).unwrap();
    path
}

#[test]
fn clip_bad_weights_are_typed_errors_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let a = arch(Activation::QuickGelu);
    let load = |p: &Path| ClipModel::load(p, Some(&a), &Device::Cpu).unwrap_err();

    let p = edited(dir.path(), |t| {
        t.remove("visual.class_embedding");
    });
    let e = load(&p);
    assert!(
        matches!(&e, ClipError::MissingTensor { name, .. } if name == "visual.class_embedding"),
        "{e}"
    );
    assert!(e.to_string().contains("edited.safetensors"), "{e}");

    let p = edited(dir.path(), |t| {
        t.insert(
            "visual.proj".into(),
            Tensor::zeros((32, 8), candle_core::DType::F16, &Device::Cpu).unwrap(),
        );
    });
    let e = load(&p);
    assert!(
        matches!(&e, ClipError::WrongShape { name, found, .. } if name == "visual.proj" && found == &[32, 8]),
        "{e}"
    );

    let p = edited(dir.path(), |t| {
        let g = Tensor::ones(32, candle_core::DType::F16, &Device::Cpu).unwrap();
        t.insert("visual.transformer.resblocks.0.ls_1.gamma".into(), g);
    });
    let e = load(&p);
    assert!(
        matches!(&e, ClipError::UnexpectedTensor { name, .. } if name.ends_with("ls_1.gamma")),
        "{e}"
    );

    let p = edited(dir.path(), |t| {
        let v = t.remove("visual.class_embedding").unwrap();
        t.insert("vision_model.embeddings.class_embedding".into(), v);
    });
    assert!(matches!(load(&p), ClipError::Naming { .. }));

    // A layer fewer than the configuration says.
    let p = edited(dir.path(), |t| {
        t.retain(|k, _| !k.starts_with("transformer.resblocks.1."))
    });
    let e = load(&p);
    assert!(
        matches!(&e, ClipError::MissingTensor { name, .. } if name.starts_with("transformer.resblocks.1.")),
        "{e}"
    );

    // OpenCLIP's custom-text naming (text tower under `text.`) loads, and computes the same.
    let p = edited(dir.path(), |t| {
        let names: Vec<String> = t
            .keys()
            .filter(|k| !k.starts_with("visual."))
            .cloned()
            .collect();
        for n in names {
            let v = t.remove(&n).unwrap();
            let n = if n == "logit_scale" {
                n
            } else {
                format!("text.{n}")
            };
            t.insert(n, v);
        }
    });
    let custom = ClipModel::load(&p, Some(&a), &Device::Cpu).unwrap();
    let plain = ClipModel::load(&weights(), Some(&a), &Device::Cpu).unwrap();
    let ids = vec![{
        let mut r = vec![0u32; CONTEXT];
        r[..3].copy_from_slice(&[49406, 320, 49407]);
        r
    }];
    let (x, y) = (
        custom
            .text_features(&ids)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        plain.text_features(&ids).unwrap().to_vec2::<f32>().unwrap(),
    );
    assert_eq!(x, y);

    let p = dir.path().join("garbage.safetensors");
    std::fs::write(&p, b"not a safetensors file").unwrap();
    let e = load(&p);
    assert!(
        matches!(&e, ClipError::Weights { path, .. } if path == &p),
        "{e}"
    );

    // Without the model config, widths that are not multiples of 64 leave the heads unknown.
    // A model whose token embedding is not the vocabulary's size.
    if let Some(vocab) = vocab() {
        let p = edited(dir.path(), |t| {
            let e = t.remove("token_embedding.weight").unwrap();
            t.insert(
                "token_embedding.weight".into(),
                e.narrow(0, 0, 1000).unwrap(),
            );
        });
        let mut small = a.clone();
        small.vocab_size = 1000;
        let e = Clip::load(&p, &vocab, Some(&small), &Device::Cpu).unwrap_err();
        assert!(matches!(&e, ClipError::VocabularyMismatch { .. }), "{e}");
        assert!(
            e.to_string().contains("49408") && e.to_string().contains("1000"),
            "{e}"
        );
    }

    let e = ClipModel::load(&weights(), None, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&e, ClipError::Architecture { .. }) && e.to_string().contains("model_config"),
        "{e}"
    );
}

#[test]
fn clip_bad_vocabularies_and_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt.gz");
    std::fs::write(&p, [0x1f, 0x8b, 1, 2, 3]).unwrap();
    let e = ClipTokenizer::load(&p).unwrap_err();
    assert!(
        matches!(&e, TokenizerError::Format { path, .. } if path == &p),
        "{e}"
    );
    std::fs::write(&p, "#version: 0.2\na b\n").unwrap();
    let e = ClipTokenizer::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("vocab.txt.gz") && e.contains("merge lines"),
        "{e}"
    );
    let e = ClipTokenizer::load(&dir.path().join("missing.gz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fetch_vocab.sh"), "{e}");

    let j = dir.path().join("model.json");
    std::fs::write(&j, r#"{"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "ls_init_value": 0.1}, "text_cfg": {"width": 14, "heads": 2, "layers": 2}}"#).unwrap();
    let e = ClipArchitecture::from_open_clip_json(&j)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ls_init_value") && e.contains("model.json"),
        "{e}"
    );
}

#[test]
fn clip_is_shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Clip>();
    send_sync::<ClipModel>();
}

#[test]
fn clip_architecture_is_inferred_from_64_wide_heads() {
    let a = ClipArchitecture {
        embed_dim: 8,
        image_size: 16,
        patch_size: 8,
        vision: TowerShape {
            width: 64,
            layers: 1,
            heads: 1,
            mlp_width: 256,
        },
        context_length: CONTEXT,
        vocab_size: 100,
        text: TowerShape {
            width: 128,
            layers: 2,
            heads: 2,
            mlp_width: 512,
        },
        activation: Activation::QuickGelu,
    };
    let t = random_tensors(&a, 7, &Device::Cpu).unwrap();
    let m = ClipModel::from_tensors(t, None, Path::new("random"), &Device::Cpu).unwrap();
    assert_eq!(m.architecture(), &a);
    let ids = vec![{
        let mut r = vec![0u32; CONTEXT];
        r[..3].copy_from_slice(&[5, 99, 7]);
        r
    }];
    let f = m.text_features(&ids).unwrap();
    assert_eq!(f.dims(), &[1, 8]);
    let bad = vec![vec![100u32; CONTEXT]];
    assert!(matches!(m.text_features(&bad), Err(ClipError::Input(_))));
    // ViT-B/32's published shapes are what `vit_b_32` says.
    let b32 = ClipArchitecture::vit_b_32();
    assert_eq!(
        (
            b32.image_size / b32.patch_size,
            b32.vision.heads,
            b32.text.heads
        ),
        (7, 12, 8)
    );
}

/// CLIP sees exactly what the embedder decoded, within the configured image limits: an image the
/// configuration refuses is dead-lettered before CLIP, and the default takes it (with variants).
#[test]
fn clip_stage_honours_the_configured_image_limits() {
    let Some(vocab) = vocab() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hidden = 4;
    let mapper = clip_cluster::hallucinate::Mapper {
        dim: 128,
        clip_dim: 16,
        hidden,
        w1: vec![0.01; hidden * 144],
        b1: vec![0.0; hidden],
        w2: vec![0.01; 128 * hidden],
        b2: vec![0.0; 128],
    };
    let mapper_path = dir.path().join("mapper.safetensors");
    mapper.save(&mapper_path).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let quoted = |p: PathBuf| format!("\"{}\"", p.display());
    let cfg = |extra: &[(&str, &str)]| {
        let mut env = vec![
            ("CLIP_CLUSTER__CLIP__WEIGHTS".to_string(), quoted(weights())),
            (
                "CLIP_CLUSTER__CLIP__MODEL_CONFIG".to_string(),
                quoted(fixture_dir().join("clip_tiny.json")),
            ),
            (
                "CLIP_CLUSTER__CLIP__VOCAB".to_string(),
                quoted(vocab.clone()),
            ),
            (
                "CLIP_CLUSTER__CLIP__PROMPTS".to_string(),
                quoted(root.join("config/prompts.toml")),
            ),
            (
                "CLIP_CLUSTER__CLIP__MAPPER_PATH".to_string(),
                quoted(mapper_path.clone()),
            ),
        ];
        for (k, v) in extra {
            env.push((format!("CLIP_CLUSTER__{k}"), v.to_string()));
        }
        clip_cluster::config::Config::load_from(None, &env).unwrap()
    };
    // A 64x48 PNG and an identity vector.
    let img = RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let f: Vec<f32> = (0..128).map(|i| ((i % 7) as f32 - 3.0) / 10.0).collect();
    // The batch core decodes each image once, within the configuration's limits, and gives the
    // same pixels to the identity network and to CLIP.
    struct Fixed(clip_cluster::embed::image::DecodeLimits, Vec<f32>);
    impl clip_cluster::embed::FaceEmbedder for Fixed {
        fn model_id(&self) -> String {
            "fixed".into()
        }
        fn dim(&self) -> usize {
            self.1.len()
        }
        fn limits(&self) -> &clip_cluster::embed::image::DecodeLimits {
            &self.0
        }
        fn embed_images(
            &self,
            images: &[&clip_cluster::embed::image::RgbImage],
        ) -> Vec<Result<clip_cluster::embed::EmbeddedFace, clip_cluster::embed::EmbedError>>
        {
            images
                .iter()
                .map(|_| {
                    Ok(clip_cluster::embed::EmbeddedFace {
                        vector: self.1.clone(),
                        quality: None,
                        located: None,
                    })
                })
                .collect()
        }
    }
    let embed = |c: &clip_cluster::config::Config| {
        let stage = clip_cluster::hallucinate::ClipStage::from_config(c)
            .unwrap()
            .expect("CLIP is on");
        let e = Fixed(
            clip_cluster::embed::image::DecodeLimits::from_config(c),
            f.clone(),
        );
        let face = clip_cluster::engine::Face::new("a", Vec::new());
        clip_cluster::pipeline::core::embed_faces(
            &e,
            Some(&stage),
            vec![(face, png.clone())],
            128,
            None,
        )
        .unwrap()
        .remove(0)
        .map(|mut faces| faces.remove(0))
    };
    let face = embed(&cfg(&[])).expect("the default limits take a 64x48 image");
    assert!(!face.variants.is_empty(), "CLIP ran on the decoded pixels");
    let small = cfg(&[("EMBED__MAX_IMAGE_SIDE", "32")]);
    assert_eq!(
        clip_cluster::embed::image::DecodeLimits::from_config(&small).max_image_side_px,
        32
    );
    let refused = embed(&small).expect_err("embed.max_image_side = 32 refuses a 64 px image");
    assert_eq!(refused.reason, clip_cluster::decode::Reason::ImageTooLarge);
}
