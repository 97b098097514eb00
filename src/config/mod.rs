//! Configuration: the built-in `config/default.toml`, an optional file, and environment variables,
//! merged in that order, checked for unknown keys against the defaults, then typed and validated.
//!
//! Raw (merged TOML) and resolved (`Config`) are two types; everything downstream sees only the
//! resolved, validated one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::EngineParams;
use crate::index::HnswParams;

/// The documented defaults, compiled in so the binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Environment variable prefix; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "CLIP_CLUSTER__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("configuration file {path} is not valid TOML: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("unknown configuration key `{key}` (from {origin}); known keys: {known}")]
    UnknownKey {
        key: String,
        origin: String,
        known: String,
    },
    #[error("configuration key `{key}` (from {origin}) must be a table, e.g. [{key}]")]
    NotATable { key: String, origin: String },
    #[error("configuration: {0}")]
    Type(String),
    #[error("configuration key `{key}` = {value}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub dim: usize,
}

/// How a face crop becomes the network's chip.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChipKind {
    Aligned,
    Centre,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    pub enabled: bool,
    pub model_path: PathBuf,
    pub landmarks_path: PathBuf,
    pub device: String,
    pub dtype: Precision,
    pub batch_size: usize,
    pub chip: ChipKind,
    pub crop_fraction: f32,
    pub box_fraction: f32,
    pub padding: f32,
    pub landmark_passes: u32,
    pub average_passes: bool,
    pub max_image_side: u32,
    pub flip_average: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyMode {
    Identity,
    Neighbor,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub mode: ProxyMode,
    pub directions_path: PathBuf,
    pub directions: usize,
    pub strength: f32,
    pub temperature: f32,
    pub context_k: usize,
    pub min_neighbors: usize,
    pub with_context: bool,
    pub attention_path: PathBuf,
    pub refresh_per_insert: usize,
    pub refresh_min_change: f32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EdgeScorerKind {
    Cosine,
    Learned,
}

/// `[edge]`: how a candidate edge is scored (see `edge`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub scorer: EdgeScorerKind,
    pub weights_path: PathBuf,
}

/// `[clip]`: CLIP attribute hallucination (see `clip`, `prompts`). Empty `weights` disables it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    pub weights: PathBuf,
    pub model_config: PathBuf,
    pub vocab: PathBuf,
    pub prompts: PathBuf,
    pub device: String,
    pub mapper_path: PathBuf,
}

impl ClipConfig {
    /// CLIP runs only when the operator supplies weights.
    pub fn enabled(&self) -> bool {
        !self.weights.as_os_str().is_empty()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub k: usize,
    pub search_k: usize,
    pub t1: f32,
    pub t2: f32,
    pub support: f32,
    pub support_region: usize,
}

/// `[calibration]`: whether the trained parts fit the stream's space (see `calibrate`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    pub mode: crate::engine::calibrate::CalibrationMode,
    pub warmup: usize,
    pub z: f32,
    pub reference_path: PathBuf,
    pub min_centroid_cos: f32,
    pub tolerance: f32,
}

/// `[quality]`: which faces may link clusters (see `quality`, `engine::EngineParams::min_quality`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QualityConfig {
    pub min_score: f32,
    pub weak_margin: f32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    pub capacity_hint: usize,
    pub snapshot_every_faces: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub cache_bytes: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    All,
    Cluster,
    Embed,
}

/// How input partitions map to clustering domains.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DomainMode {
    /// Every consumed partition feeds one domain whose state is `store.path`.
    Single,
    /// Each input partition is its own domain, with its state in `store.path/<domain>/`.
    PerPartition,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub role: Role,
    pub domains: DomainMode,
    /// The domain of single mode.
    pub domain: String,
    /// Per-partition mode: start a fresh domain for a partition that the group has committed
    /// offsets for but whose state directory is missing, instead of pausing it.
    pub allow_fresh_domains: bool,
    /// Per-partition mode: "<topic>-<partition>" -> domain name.
    pub domain_names: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub group_instance_id: String,
    pub input_topics: Vec<String>,
    pub events_topic: String,
    pub embeddings_topic: String,
    pub dead_letter_topic: String,
    /// Free-form librdkafka properties (see `FREE_FORM`).
    pub properties: BTreeMap<String, String>,
    pub consumer_properties: BTreeMap<String, String>,
    pub producer_properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub max_batch: usize,
    pub max_batch_wait_ms: u64,
    pub max_message_bytes: usize,
    pub max_image_pixels: u64,
    /// Whether the Kafka message key is the face id of a message that carries none. Off by
    /// default: producers key by domain (tenant, camera group) for scale-out, and taking that
    /// key as the face id would make every face of a tenant after the first a duplicate.
    pub key_is_face_id: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub outbox_batch: usize,
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
}

/// Tables whose keys are librdkafka properties: passed through, validated by librdkafka.
pub const FREE_FORM: [&str; 4] = [
    "kafka.properties",
    "kafka.consumer_properties",
    "kafka.producer_properties",
    // Not librdkafka properties, but the same shape: partition names to domain names.
    "daemon.domain_names",
];

/// Whether `name` can be a domain: a directory name under `store.path`, an event key and a
/// metric label value. Letters, digits, '.', '_', '-'; not starting with '.'; at most 200 bytes.
pub fn valid_domain_name(name: &str) -> bool {
    // A state directory's own entries: a domain directory by such a name would make
    // `store.path` look like a (single-domain) state directory.
    let reserved = ["db", "conf", "blobs", "index", "clip-cluster-state.json"];
    !name.is_empty()
        && !reserved.contains(&name)
        && !name.starts_with("snap.")
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The resolved configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub embed: EmbedConfig,
    pub proxy: ProxyConfig,
    pub edge: EdgeConfig,
    pub clip: ClipConfig,
    pub engine: EngineConfig,
    pub quality: QualityConfig,
    pub calibration: CalibrationConfig,
    pub index: IndexConfig,
    pub store: StoreConfig,
    pub daemon: DaemonConfig,
    pub kafka: KafkaConfig,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    pub admin: AdminConfig,
}

impl Config {
    /// The built-in default configuration (`config/default.toml`).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::load_from(None, &[])
    }

    /// For synthetic faces, whose space is not the embedder's: `engine.t1` becomes the
    /// generator's calibrated threshold and the proxy the identity vector (directions learned on
    /// real faces do not transfer), each only while left at its default. Returns what changed.
    pub fn use_synthetic_settings(&mut self) -> Vec<String> {
        let Ok(d) = Self::defaults() else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        if self.engine.t1 == d.engine.t1 && d.engine.t1 != crate::eval::synth::CALIBRATED_T1 {
            self.engine.t1 = crate::eval::synth::CALIBRATED_T1;
            changed.push(format!(
                "engine.t1 = {} (the generator's calibrated threshold)",
                self.engine.t1
            ));
        }
        if self.engine.k == d.engine.k && d.engine.k != crate::eval::synth::CALIBRATED_K {
            self.engine.k = crate::eval::synth::CALIBRATED_K;
            changed.push(format!(
                "engine.k = {} (the generator's calibrated out-list length)",
                self.engine.k
            ));
        }
        if self.engine.t2 == d.engine.t2 && d.engine.t2 != crate::eval::synth::CALIBRATED_T2 {
            self.engine.t2 = crate::eval::synth::CALIBRATED_T2;
            changed.push(format!(
                "engine.t2 = {} (the generator's calibrated intimacy threshold)",
                self.engine.t2
            ));
        }
        if self.proxy == d.proxy && self.proxy.mode != ProxyMode::Identity {
            self.proxy.mode = ProxyMode::Identity;
            changed.push(
                "proxy.mode = \"identity\" (the learned directions belong to the embedder's space)"
                    .into(),
            );
        }
        if self.calibration == d.calibration
            && self.calibration.mode != crate::engine::calibrate::CalibrationMode::Trained
        {
            self.calibration.mode = crate::engine::calibrate::CalibrationMode::Trained;
            changed.push(
                "calibration.mode = \"trained\" (the generator's threshold fits its own space)"
                    .into(),
            );
        }
        if self.edge == d.edge && self.edge.scorer != EdgeScorerKind::Cosine {
            self.edge.scorer = EdgeScorerKind::Cosine;
            changed.push(
                "edge.scorer = \"cosine\" (the edge head was trained in the embedder's space)"
                    .into(),
            );
        }
        changed
    }

    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_from(file, &env)
    }

    /// As `load`, with the environment given explicitly (tests).
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let defaults: toml::Table =
            DEFAULT_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: PathBuf::from("config/default.toml (built in)"),
                    reason: e.to_string(),
                })?;
        let mut merged = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            overlay(
                &mut merged,
                &defaults,
                table,
                "",
                &path.display().to_string(),
            )?;
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let value = parse_env_value(raw);
            let mut table = toml::Table::new();
            let mut cursor = &mut table;
            for (i, part) in parts.iter().enumerate() {
                if i + 1 == parts.len() {
                    cursor.insert(part.clone(), value.clone());
                } else {
                    cursor = cursor
                        .entry(part.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .ok_or_else(|| ConfigError::Type(format!("bad variable {name}")))?;
                }
            }
            overlay(
                &mut merged,
                &defaults,
                table,
                "",
                &format!("environment variable {name}"),
            )?;
        }
        let cfg: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Type(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks that serde's types cannot express, each naming the key and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, value: impl ToString, allowed: &'static str) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                allowed,
            }
        }
        let m = &self.embed;
        if !(1..=4096).contains(&m.batch_size) {
            return Err(bad("embed.batch_size", m.batch_size, "must be in 1..=4096"));
        }
        if !(m.crop_fraction > 0.05 && m.crop_fraction <= 1.0) {
            return Err(bad(
                "embed.crop_fraction",
                m.crop_fraction,
                "must be in (0.05, 1]",
            ));
        }
        if !(m.box_fraction > 0.05 && m.box_fraction <= 1.0) {
            return Err(bad(
                "embed.box_fraction",
                m.box_fraction,
                "must be in (0.05, 1]",
            ));
        }
        if !(0.0..=2.0).contains(&m.padding) {
            return Err(bad("embed.padding", m.padding, "must be in [0, 2]"));
        }
        if !(1..=4).contains(&m.landmark_passes) {
            return Err(bad(
                "embed.landmark_passes",
                m.landmark_passes,
                "must be in 1..=4 (1: the fixed box only; 2: one refined pass)",
            ));
        }
        if m.average_passes && (m.landmark_passes < 2 || m.chip != ChipKind::Aligned) {
            return Err(bad(
                "embed.average_passes",
                m.average_passes,
                "true needs chip = \"aligned\" and landmark_passes >= 2 (one chip has nothing to average)",
            ));
        }
        if m.max_image_side < 16 {
            return Err(bad(
                "embed.max_image_side",
                m.max_image_side,
                "must be at least 16",
            ));
        }
        if !(m.device == "cpu"
            || m.device == "cuda"
            || m.device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok()))
        {
            return Err(bad(
                "embed.device",
                &m.device,
                "must be \"cpu\", \"cuda\" or \"cuda:N\"",
            ));
        }
        let x = &self.proxy;
        if !(x.temperature.is_finite() && x.temperature > 0.0) {
            return Err(bad("proxy.temperature", x.temperature, "must be > 0"));
        }
        if !(x.strength.is_finite() && (0.0..=100.0).contains(&x.strength)) {
            return Err(bad("proxy.strength", x.strength, "must be in [0, 100]"));
        }
        if x.refresh_per_insert > self.engine.search_k {
            return Err(bad(
                "proxy.refresh_per_insert",
                x.refresh_per_insert,
                "must be in 0..=engine.search_k",
            ));
        }
        if !(x.refresh_min_change.is_finite() && (0.0..1.0).contains(&x.refresh_min_change)) {
            return Err(bad(
                "proxy.refresh_min_change",
                x.refresh_min_change,
                "must be in [0, 1)",
            ));
        }
        if x.context_k == 0 || x.context_k > self.engine.search_k {
            return Err(bad(
                "proxy.context_k",
                x.context_k,
                "must be in 1..=engine.search_k",
            ));
        }
        if self.edge.scorer == EdgeScorerKind::Learned
            && self.edge.weights_path.as_os_str().is_empty()
        {
            return Err(bad(
                "edge.weights_path",
                "\"\"",
                "must name the edge head (clip-cluster train --edge-out) when edge.scorer = \"learned\"",
            ));
        }
        let c = &self.clip;
        if !is_device(&c.device) {
            return Err(bad(
                "clip.device",
                &c.device,
                "must be \"cpu\", \"cuda\" or \"cuda:N\"",
            ));
        }
        if c.enabled() && c.vocab.as_os_str().is_empty() {
            return Err(bad(
                "clip.vocab",
                "\"\"",
                "must name CLIP's BPE vocabulary when clip.weights is set (tools/clip/fetch_vocab.sh)",
            ));
        }
        if c.enabled() && c.prompts.as_os_str().is_empty() {
            return Err(bad(
                "clip.prompts",
                "\"\"",
                "must name a prompts file when clip.weights is set (e.g. config/prompts.toml)",
            ));
        }
        let e = &self.engine;
        if self.model.name.trim().is_empty() {
            return Err(bad("model.name", "\"\"", "must name the model"));
        }
        if !(1..=4096).contains(&self.model.dim) {
            return Err(bad("model.dim", self.model.dim, "must be in 1..=4096"));
        }
        if !(1..=256).contains(&e.k) {
            return Err(bad("engine.k", e.k, "must be in 1..=256"));
        }
        if e.search_k < e.k || e.search_k > 4096 {
            return Err(bad(
                "engine.search_k",
                e.search_k,
                "must be at least engine.k and at most 4096",
            ));
        }
        if !(e.t1.is_finite() && (-1.0..1.0).contains(&e.t1)) {
            return Err(bad(
                "engine.t1",
                e.t1,
                "must be a cosine similarity in [-1, 1)",
            ));
        }
        let c = &self.calibration;
        if !(2..=5000).contains(&c.warmup) {
            return Err(bad("calibration.warmup", c.warmup, "must be in 2..=5000"));
        }
        for (key, v) in [
            ("calibration.z", c.z),
            ("calibration.tolerance", c.tolerance),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(key, v, "must be a finite number > 0"));
            }
        }
        if !(c.min_centroid_cos.is_finite() && (-1.0..=1.0).contains(&c.min_centroid_cos)) {
            return Err(bad(
                "calibration.min_centroid_cos",
                c.min_centroid_cos,
                "must be in [-1, 1]",
            ));
        }
        let q = self.quality.min_score;
        if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
            return Err(bad("quality.min_score", q, "must be in [0, 1]"));
        }
        let w = self.quality.weak_margin;
        if !(w.is_finite() && (0.0..=1.0).contains(&w)) {
            return Err(bad(
                "quality.weak_margin",
                w,
                "must be in [0, 1]; 1 = a weak face keeps only its one edge",
            ));
        }
        if !(e.support.is_finite() && (0.0..=1.0).contains(&e.support)) {
            return Err(bad(
                "engine.support",
                e.support,
                "must be in [0, 1]; 0 = connected components",
            ));
        }
        if !(e.t2.is_finite() && (0.0..1.0).contains(&e.t2)) {
            return Err(bad(
                "engine.t2",
                e.t2,
                "must be in [0, 1); 0 disables the refinement",
            ));
        }
        let i = &self.index;
        if !(4..=64).contains(&i.m) {
            return Err(bad("index.m", i.m, "must be in 4..=64"));
        }
        if i.ef_construction < 8 {
            return Err(bad(
                "index.ef_construction",
                i.ef_construction,
                "must be >= 8",
            ));
        }
        if i.ef_search < 1 {
            return Err(bad("index.ef_search", i.ef_search, "must be >= 1"));
        }
        if i.capacity_hint < 1 {
            return Err(bad("index.capacity_hint", i.capacity_hint, "must be >= 1"));
        }
        if i.snapshot_every_faces < 100 {
            return Err(bad(
                "index.snapshot_every_faces",
                i.snapshot_every_faces,
                "must be >= 100",
            ));
        }
        if self.store.path.as_os_str().is_empty() {
            return Err(bad("store.path", "\"\"", "must name a directory"));
        }
        if self.store.cache_bytes < 1 << 20 {
            return Err(bad(
                "store.cache_bytes",
                self.store.cache_bytes,
                "must be at least 1048576",
            ));
        }
        if self.daemon.domain.trim().is_empty() {
            return Err(bad(
                "daemon.domain",
                "\"\"",
                "must name the clustering domain",
            ));
        }
        self.validate_domain_names()?;
        let k = &self.kafka;
        if k.input_topics.is_empty() || k.input_topics.iter().any(|t| t.trim().is_empty()) {
            return Err(bad(
                "kafka.input_topics",
                format!("{:?}", k.input_topics),
                "must list at least one non-empty topic",
            ));
        }
        for (key, v) in [
            ("kafka.bootstrap_servers", &k.bootstrap_servers),
            ("kafka.group_id", &k.group_id),
            ("kafka.events_topic", &k.events_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ] {
            if v.trim().is_empty() {
                return Err(bad(key, "\"\"", "must not be empty"));
            }
        }
        let s = &self.source;
        if !(1..=100_000).contains(&s.max_batch) {
            return Err(bad(
                "source.max_batch",
                s.max_batch,
                "must be in 1..=100000",
            ));
        }
        if s.max_batch_wait_ms > 60_000 {
            return Err(bad(
                "source.max_batch_wait_ms",
                s.max_batch_wait_ms,
                "must be at most 60000",
            ));
        }
        if !(1024..=64 << 20).contains(&s.max_message_bytes) {
            return Err(bad(
                "source.max_message_bytes",
                s.max_message_bytes,
                "must be in 1024..=67108864",
            ));
        }
        if s.max_image_pixels < 64 * 64 {
            return Err(bad(
                "source.max_image_pixels",
                s.max_image_pixels,
                "must be at least 4096",
            ));
        }
        if !(1..=100_000).contains(&self.sink.outbox_batch) {
            return Err(bad(
                "sink.outbox_batch",
                self.sink.outbox_batch,
                "must be in 1..=100000",
            ));
        }
        if self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "admin.listen",
                &self.admin.listen,
                "must be an address like 127.0.0.1:9464",
            ));
        }
        Ok(())
    }

    /// Whether `text` is "<topic>-<partition>" for one of the input topics.
    fn input_partition_name(&self, text: &str) -> bool {
        self.kafka.input_topics.iter().any(|t| {
            text.strip_prefix(t.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    }

    fn validate_domain_names(&self) -> Result<(), ConfigError> {
        let names = &self.daemon.domain_names;
        let mut seen = std::collections::BTreeSet::new();
        for (from, to) in names {
            let value = format!("\"{from}\" = \"{to}\"");
            if !self.input_partition_name(from) {
                return Err(ConfigError::Invalid {
                    key: "daemon.domain_names",
                    value,
                    allowed:
                        "keys are \"<input topic>-<partition>\" for a topic of kafka.input_topics",
                });
            }
            if !valid_domain_name(to) {
                return Err(ConfigError::Invalid {
                    key: "daemon.domain_names",
                    value,
                    allowed: "names use letters, digits, '.', '_' and '-', do not start with '.', \
                              have at most 200 bytes, and are not a state directory's own \
                              entries (db, conf, blobs, index, snap.*, clip-cluster-state.json)",
                });
            }
            // Another partition's default name, or a name given twice, would put two partitions
            // in one state directory.
            if (to != from && self.input_partition_name(to)) || !seen.insert(to.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "daemon.domain_names",
                    value,
                    allowed: "each name must be unique and must not be another partition's \
                              \"<topic>-<partition>\" name",
                });
            }
        }
        if self.daemon.domains == DomainMode::PerPartition {
            for t in &self.kafka.input_topics {
                if !valid_domain_name(&format!("{t}-0")) {
                    return Err(ConfigError::Invalid {
                        key: "kafka.input_topics",
                        value: t.clone(),
                        allowed: "in per_partition mode a topic name becomes part of a directory \
                                  name: letters, digits, '.', '_' and '-', at most 190 bytes",
                    });
                }
            }
        }
        Ok(())
    }

    /// The clustering domain of an input partition: in single mode `daemon.domain`; in
    /// per-partition mode "<topic>-<partition>" unless `daemon.domain_names` renames it.
    pub fn domain_of(&self, topic: &str, partition: i32) -> String {
        match self.daemon.domains {
            DomainMode::Single => self.daemon.domain.clone(),
            DomainMode::PerPartition => {
                let own = format!("{topic}-{partition}");
                self.daemon.domain_names.get(&own).cloned().unwrap_or(own)
            }
        }
    }

    /// Where a domain's state lives: `store.path` in single mode, `store.path/<domain>` in
    /// per-partition mode.
    pub fn state_dir(&self, domain: &str) -> PathBuf {
        match self.daemon.domains {
            DomainMode::Single => self.store.path.clone(),
            DomainMode::PerPartition => self.store.path.join(domain),
        }
    }

    pub fn engine_params(&self) -> EngineParams {
        EngineParams {
            dim: self.model.dim,
            k: self.engine.k,
            search_k: self.engine.search_k,
            t1: self.engine.t1,
            t2: self.engine.t2,
            min_quality: self.quality.min_score,
            weak_margin: self.quality.weak_margin,
            support: self.engine.support,
            support_region: self.engine.support_region,
            refresh: match self.proxy.mode {
                ProxyMode::Identity => 0,
                ProxyMode::Neighbor => self.proxy.refresh_per_insert,
            },
            refresh_min_change: self.proxy.refresh_min_change,
        }
    }

    /// The calibration settings, with the reference profile read from `reference_path` when the
    /// mode compares against it ("auto").
    pub fn calibration_params(
        &self,
    ) -> Result<crate::engine::calibrate::CalibrationParams, crate::engine::calibrate::ReferenceError>
    {
        use crate::engine::calibrate::{read_reference, CalibrationMode, SpaceProfile};
        let c = &self.calibration;
        let reference = if c.mode == CalibrationMode::Auto {
            read_reference(&c.reference_path, self.model.dim)?
        } else {
            SpaceProfile {
                centroid: vec![0.0; self.model.dim],
                median: 0.0,
                spread: 1.0,
                pairs: 0,
            }
        };
        Ok(crate::engine::calibrate::CalibrationParams {
            mode: c.mode,
            warmup: c.warmup,
            z: c.z,
            reference,
            min_centroid_cos: c.min_centroid_cos,
            tolerance: c.tolerance,
        })
    }

    pub fn hnsw_params(&self) -> HnswParams {
        HnswParams {
            m: self.index.m,
            ef_construction: self.index.ef_construction,
            ef_search: self.index.ef_search,
            capacity_hint: self.index.capacity_hint,
        }
    }
}

/// "cpu", "cuda" or "cuda:N".
fn is_device(name: &str) -> bool {
    name == "cpu"
        || name == "cuda"
        || name
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Writes `src` over `dst`, refusing any key the defaults do not have.
fn overlay(
    dst: &mut toml::Table,
    defaults: &toml::Table,
    src: toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (key, value) in src {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if FREE_FORM.contains(&prefix) {
            // librdkafka properties: any name, string values (numbers and booleans are written
            // as librdkafka expects them).
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(ConfigError::Type(format!(
                        "{path} (from {origin}) must be a string, number or boolean"
                    )))
                }
            };
            dst.insert(key, toml::Value::String(text));
            continue;
        }
        let Some(default) = defaults.get(&key) else {
            let known: Vec<String> = defaults
                .keys()
                .map(|k| {
                    if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    }
                })
                .collect();
            return Err(ConfigError::UnknownKey {
                key: path,
                origin: origin.to_string(),
                known: known.join(", "),
            });
        };
        match (default, value) {
            (toml::Value::Table(def_t), toml::Value::Table(src_t)) => {
                let dst_t = dst
                    .get_mut(&key)
                    .and_then(|v| v.as_table_mut())
                    .ok_or_else(|| ConfigError::NotATable {
                        key: path.clone(),
                        origin: origin.to_string(),
                    })?;
                overlay(dst_t, def_t, src_t, &path, origin)?;
            }
            (toml::Value::Table(_), _) => {
                return Err(ConfigError::NotATable {
                    key: path,
                    origin: origin.to_string(),
                })
            }
            (_, v) => {
                dst.insert(key, v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_file_in_config_dir_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name().is_some_and(|n| n == "prompts.toml") {
                // Not a configuration: CLIP's attribute prompts ([clip] prompts).
                crate::hallucinate::prompts::Prompts::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            } else if p.extension().is_some_and(|e| e == "toml") {
                Config::load_from(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn file_then_env_override_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "[engine]\nk = 7\nt1 = 0.5\n");
        let env = vec![("CLIP_CLUSTER__ENGINE__T1".to_string(), "0.75".to_string())];
        let c = Config::load_from(Some(&p), &env).unwrap();
        assert_eq!(c.engine.k, 7);
        assert_eq!(c.engine.t1, 0.75);
        let env = vec![(
            "CLIP_CLUSTER__STORE__PATH".to_string(),
            "/tmp/x y".to_string(),
        )];
        let c = Config::load_from(None, &env).unwrap();
        assert_eq!(c.store.path, PathBuf::from("/tmp/x y"));
    }

    #[test]
    fn the_message_key_is_not_the_face_id_unless_configured() {
        // Producers key by domain for scale-out: the key must not silently become the face id.
        let c = Config::defaults().unwrap();
        assert!(!c.source.key_is_face_id);
        assert!(!crate::decode::Limits::from_config(&c).key_is_face_id);
        let env = vec![(
            "CLIP_CLUSTER__SOURCE__KEY_IS_FACE_ID".to_string(),
            "true".to_string(),
        )];
        let c = Config::load_from(None, &env).unwrap();
        assert!(crate::decode::Limits::from_config(&c).key_is_face_id);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "[engine]\nkk = 7\n");
        let e = Config::load_from(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            e.contains("engine.kk") && e.contains("engine.search_k"),
            "{e}"
        );
        let p = write(d.path(), "[enigne]\nk = 7\n");
        assert!(Config::load_from(Some(&p), &[])
            .unwrap_err()
            .to_string()
            .contains("enigne"));
        let env = vec![("CLIP_CLUSTER__ENGINE__NOPE".to_string(), "1".to_string())];
        let e = Config::load_from(None, &env).unwrap_err().to_string();
        assert!(
            e.contains("engine.nope") && e.contains("CLIP_CLUSTER__ENGINE__NOPE"),
            "{e}"
        );
    }

    #[test]
    fn librdkafka_properties_pass_through_any_name() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\n[kafka.consumer_properties]\n\"fetch.min.bytes\" = 1024\n",
        );
        let env = vec![(
            "CLIP_CLUSTER__KAFKA__PRODUCER_PROPERTIES__LINGER.MS".to_string(),
            "7".to_string(),
        )];
        let c = Config::load_from(Some(&p), &env).unwrap();
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(c.kafka.consumer_properties["fetch.min.bytes"], "1024");
        assert_eq!(c.kafka.producer_properties["linger.ms"], "7");
        // Outside those tables, names are still checked.
        let p = write(d.path(), "[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n");
        assert!(Config::load_from(Some(&p), &[]).is_err());
    }

    #[test]
    fn domains_per_partition_with_renames() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.daemon.domains, DomainMode::Single);
        assert_eq!(c.domain_of("faces", 3), "default");
        assert_eq!(c.state_dir("default"), c.store.path);
        let p = write(
            d.path(),
            "[daemon]\ndomains = \"per_partition\"\n[daemon.domain_names]\n\"faces-1\" = \"tenant-acme\"\n",
        );
        let c = Config::load_from(Some(&p), &[]).unwrap();
        assert_eq!(c.daemon.domains, DomainMode::PerPartition);
        assert_eq!(c.domain_of("faces", 3), "faces-3");
        assert_eq!(c.domain_of("faces", 1), "tenant-acme");
        assert_eq!(c.state_dir("faces-3"), c.store.path.join("faces-3"));
        let env = vec![(
            "CLIP_CLUSTER__DAEMON__DOMAINS".to_string(),
            "per_partition".to_string(),
        )];
        assert!(Config::load_from(None, &env).is_ok());
        for text in [
            "[daemon]\ndomains = \"per-topic\"\n",
            "[daemon.domain_names]\n\"other-1\" = \"a\"\n",
            "[daemon.domain_names]\n\"faces-x\" = \"a\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"../a\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \".hidden\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"a b\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"db\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"faces-2\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"a\"\n\"faces-2\" = \"a\"\n",
        ] {
            let p = write(d.path(), text);
            let e = Config::load_from(Some(&p), &[]).unwrap_err().to_string();
            assert!(e.contains("daemon.domain"), "{text}: {e}");
        }
        // A partition may keep its own name explicitly.
        let p = write(
            d.path(),
            "[daemon.domain_names]\n\"faces-1\" = \"faces-1\"\n",
        );
        assert!(Config::load_from(Some(&p), &[]).is_ok());
    }

    #[test]
    fn bad_values_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("[engine]\nk = 0\n", "engine.k"),
            ("[engine]\nsearch_k = 2\n", "engine.search_k"),
            ("[engine]\nt1 = 1.5\n", "engine.t1"),
            ("[engine]\nt2 = -0.1\n", "engine.t2"),
            ("[index]\nm = 1000\n", "index.m"),
            ("[model]\ndim = 0\n", "model.dim"),
            ("[embed]\nlandmark_passes = 0\n", "embed.landmark_passes"),
            ("[embed]\naverage_passes = true\n", "embed.average_passes"),
            ("[clip]\ndevice = \"gpu\"\n", "clip.device"),
            (
                "[clip]\nweights = \"w.safetensors\"\nvocab = \"\"\n",
                "clip.vocab",
            ),
            (
                "[clip]\nweights = \"w.safetensors\"\nprompts = \"\"\n",
                "clip.prompts",
            ),
        ] {
            let p = write(d.path(), text);
            let e = Config::load_from(Some(&p), &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let p = write(d.path(), "[engine]\nk = \"ten\"\n");
        let e = Config::load_from(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains('k'), "{e}");
        let p = write(d.path(), "engine = 3\n");
        assert!(Config::load_from(Some(&p), &[]).is_err());
        let p = write(d.path(), "[engine\n");
        let e = Config::load_from(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("c.toml"), "{e}");
    }
}
