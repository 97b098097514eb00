//! clip-cluster: streaming face clustering by identity, after CLIP-Cluster (ICCV 2023).
//!
//! Layout, in the order data flows:
//! - `config`: raw and resolved configuration (`config/default.toml`, file, environment).
//! - `engine`: the IO-free incremental clustering core (kNN re-linking, intimacy, components).
//! - `proxy` (learned directions, the neighbour-aware proxy), `attention` (its trained W_q, W_k)
//!   and `edge` (cosine or the trained edge head): the stages the engine is generic over.
//! - `index`: the nearest-neighbour seam, exact and HNSW implementations, HNSW snapshots.
//! - `store`: durable state and the event outbox in sled.
//! - `clusterer`: engine + store + index snapshots, kept consistent (write-ahead order).
//! - `clip` (towers, tokenizer, preprocessing), `prompts` (prompt pairs, text directions) and
//!   `hallucinate` (the mapper H into identity space, its training, the hallucinator): CLIP
//!   attribute hallucination.
//! - `features`, `metrics`, `knn`, `baselines`, `eval`: the evaluation harness and peer algorithms.
//! - `synth`: seeded synthetic identities for tests, benchmarks and the default job.
//! - `bench`: the insert benchmark with durable state.
//! - `message`: input formats and decoding (pure); `domain`: clustering domains and the guard for
//!   a partition without its state (pure); `pipeline`: the daemon (Kafka in, domains, events out);
//!   `sink`: events and dead letters out; `admin`: /metrics, /healthz, /readyz;
//!   `telemetry`: Prometheus metrics; `mock`: librdkafka's mock cluster; `demo`, `produce`.
//! - `decode` (image bytes -> RGB within limits -> chip), `align` (dlib 5-point landmarks and face
//!   chip), `dlib_format` (dlib's serialization), `dlib_resnet` (the identity network in candle),
//!   `embed` (the `FaceEmbedder` seam and the dlib embedder), `dataset` and `lfw` (labeled face
//!   directories, LFW lists and the verification protocol).

pub mod admin;
pub mod align;
pub mod attention;
pub mod baselines;
pub mod bench;
pub mod calibrate;
pub mod clip;
pub mod clusterer;
pub mod config;
pub mod dataset;
pub mod decode;
pub mod demo;
pub mod dlib_format;
pub mod dlib_resnet;
pub mod domain;
pub mod edge;
pub mod embed;
pub mod embed_bench;
pub mod engine;
pub mod eval;
pub mod features;
pub mod hallucinate;
pub mod index;
pub mod knn;
pub mod lfw;
pub mod message;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod produce;
pub mod prompts;
pub mod proxy;
pub mod quality;
pub mod sink;
pub mod store;
pub mod synth;
pub mod telemetry;
pub mod weights;
