//! clip-cluster: streaming face clustering by identity, after CLIP-Cluster (ICCV 2023).
//!
//! Layout, in the order a face travels (ARCHITECTURE.md has the map):
//! - `config`: raw and resolved configuration (`config/default.toml`, file, environment, flags).
//! - `pipeline`: the daemon, the only place that wires stages and spawns tasks: clustering
//!   domains, the batch core, embedding workers, /metrics and health.
//! - `source`: the Kafka consumer (offsets stored only after a batch is durable).
//! - `decode`: message bytes -> a face (vector or image) or a rejection, pure.
//! - `embed`: image bytes -> RGB -> dlib landmarks and chip -> the identity network -> a vector.
//! - `hallucinate`: CLIP towers, prompts and the mapper into identity space.
//! - `proxy`: the neighbour-aware proxy (learned directions, attention); `edge`: edge scores.
//! - `index`: the nearest-neighbour seam, exact and HNSW, snapshots.
//! - `engine`: the IO-free incremental clustering core (kNN re-linking, intimacy, cluster rule,
//!   the stream's calibration).
//! - `store`: durable state and the event outbox in sled; `clusterer`: engine + store + index
//!   snapshots kept consistent (write-ahead order).
//! - `sink`: events and dead letters out; `telemetry`: Prometheus metrics; `api`: the operator
//!   API (reads and search over the open domains' states).
//!
//! Offline, apart from the daemon: `train` (fitting the trained parts), `eval` (metrics, peers'
//! algorithms, labelled datasets, LFW, synthetic faces), `bench`, and `cli` (one file per command).
//! `weights` reads and writes the trained parts' files for both sides.

pub mod config;
pub mod pipeline;

pub mod api;
pub mod clusterer;
pub mod decode;
pub mod edge;
pub mod embed;
pub mod engine;
pub mod hallucinate;
pub mod index;
pub mod proxy;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;

pub mod weights;

pub mod bench;
pub mod cli;
pub mod eval;
pub mod train;
