//! Configuration: the built-in `config/default.toml`, an optional file, and environment variables,
//! merged in that order, checked for unknown keys against the defaults, then typed and validated.
//!
//! Raw (merged TOML) and resolved (`Config`) are two types; everything downstream sees only the
//! resolved, validated one.

mod load;
mod validate;

pub use load::Overrides;

use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// Where the landmark model starts: a detected face box, or the fixed centred box.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Locate {
    Detect,
    Fixed,
}

/// What an image without a (certain) face becomes: embedded from the fixed box, flagged and
/// counted, or dead-lettered as `no_face` / `face_uncertain`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoFace {
    Fixed,
    Reject,
}

/// How many faces one image gives: the face nearest its centre, or every face found (each its
/// own face in the stream, `<face_id>#<n>`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FacesPerImage {
    One,
    All,
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
    pub locate: Locate,
    pub detector_path: PathBuf,
    pub no_face: NoFace,
    pub min_face_px: u32,
    pub min_face_score: f32,
    pub max_face_outside: f32,
    pub detect_max_side: u32,
    pub refine_box: bool,
    pub faces_per_image: FacesPerImage,
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
    pub same_image_cannot_link: bool,
}

/// `[calibration]`: whether the trained parts fit the stream's space (see `calibrate`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    pub mode: crate::engine::calibrate::CalibrationMode,
    pub warmup: usize,
    pub threshold: crate::engine::calibrate::ThresholdRule,
    pub z: f32,
    pub z_max: f32,
    pub valley_margin: f32,
    pub refit_until: usize,
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
    /// Erased faces stay in the HNSW structure as filtered tombstones until they are this
    /// fraction of its points; then the index is rebuilt without them (0: after every erasure).
    pub compact_fraction: f32,
    /// A compaction rebuilds the index on a worker beside the stream and swaps it in after this
    /// many new faces per live point it holds. 0: at once, blocking the domain.
    pub compact_window: f32,
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
    /// Operator commands (feedback and erasure, JSON); empty: none are read from Kafka.
    pub commands_topic: String,
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
    /// What a dead letter carries of the refused message: its metadata only, or the bytes too.
    pub dead_letter_payload: DeadLetterPayload,
}

/// `sink.dead_letter_payload`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterPayload {
    /// Key, headers, reason and the payload's size and SHA-256: no face image leaves the daemon.
    Metadata,
    /// The original payload as received (a face image or vector kept by whoever reads the topic).
    Full,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
}

/// How long faces are kept (`clusterer::Clusterer::expire`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// A face older than this is erased (reason `retention`): "30d", "12h", "90m", "3600s";
    /// empty: kept until erased.
    pub max_age: String,
    /// Seconds between sweeps.
    pub sweep_interval_s: u64,
    /// Most faces one sweep erases per domain (the rest wait for the next sweep).
    pub max_per_sweep: usize,
}

impl RetentionConfig {
    /// `max_age` in milliseconds; `None`: no retention.
    pub fn max_age_ms(&self) -> Result<Option<u64>, String> {
        let t = self.max_age.trim();
        if t.is_empty() {
            return Ok(None);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{t:?}: a whole number and a unit (d, h, m, s), e.g. \"30d\""))?;
        let ms = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            _ => {
                return Err(format!(
                    "{t:?}: the unit must be d, h, m or s, e.g. \"30d\""
                ))
            }
        };
        match n.checked_mul(ms) {
            Some(v) if v > 0 => Ok(Some(v)),
            _ => Err(format!(
                "{t:?}: must be above zero (empty turns retention off)"
            )),
        }
    }
}

/// The operator API (`src/api/`): JSON over HTTP on its own listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub enabled: bool,
    pub listen: String,
    /// The bearer token; empty: none (then `token_file`, else writes are refused).
    pub token: String,
    /// A file whose first line is the token (read at start-up); empty: none.
    pub token_file: String,
    /// Reads without a token.
    pub public_reads: bool,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Keep a small JPEG of each embedded face (or the one a message carries) for the review
    /// page, erased with the face.
    pub keep_thumbnails: bool,
    /// A kept thumbnail's longest side, pixels.
    pub thumbnail_px: u32,
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
    pub api: ApiConfig,
    pub retention: RetentionConfig,
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
            same_image_cannot_link: self.engine.same_image_cannot_link,
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
            threshold: c.threshold,
            z: c.z,
            z_max: c.z_max,
            valley_margin: c.valley_margin,
            refit_until: c.refit_until,
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
