//! Prometheus metrics of the daemon. One `Metrics` per process (or per test), owning its own
//! registry, so tests can run daemons side by side. Names follow
//! `clip_cluster_<name>_<unit>[_total]`; labels are bounded: a fixed set of reasons, types and
//! kinds, and `domain`, whose values are the domains this process holds. Domains are the input
//! partitions (per-partition mode) or one name (single mode), so their number is bounded by the
//! input topics' partition counts; a domain's series are removed when its partition moves away.

use prometheus::{
    Counter, Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the daemon exports. Dashboards and alert rules may use only these (tested).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Messages read from the input topics.
    pub faces_consumed: IntCounter,
    /// Faces applied to the clustering state (new face ids).
    pub faces_applied: IntCounter,
    /// Faces whose id was already applied (redeliveries); nothing changed.
    pub faces_duplicate: IntCounter,
    /// Faces erased (an operator's erasure of a face, a person or a source; retention), by why.
    pub faces_erased: IntCounterVec,
    /// Messages whose face id was erased: refused, never applied again.
    pub faces_erased_redelivered: IntCounter,
    /// Proxies of older faces recomputed and re-linked by the bounded refresh.
    pub proxies_refreshed: IntCounter,
    /// Image messages turned into identity vectors by this process's embedder.
    pub faces_embedded: IntCounter,
    /// Embedded images by how their face was located (`embed.locate = "detect"`): `detected`,
    /// or from the fixed box after `no_face` / `face_uncertain`.
    pub embed_located: IntCounterVec,
    /// Faces assigned as weak (quality below `quality.min_score`): they never join clusters.
    pub faces_low_quality: IntCounter,
    /// Faces stored while a new state's calibration warm-up waits for its decision.
    pub faces_waiting: IntCounter,
    /// Changes the cluster-level rule applied locally (component over `engine.support_region`).
    pub cluster_rule_local: IntCounter,
    /// Time spent writing the periodic HNSW snapshots, in seconds.
    pub index_snapshot_seconds: Counter,
    /// Time to embed one batch's images (decode, chip, network), in seconds.
    pub embed_duration: Histogram,
    /// Messages rejected, by reason (each also goes to the dead-letter topic).
    pub faces_rejected: IntCounterVec,
    /// Messages written to the dead-letter topic.
    pub dead_letters: IntCounter,
    /// Events delivered to the events topic (acknowledged by the broker), by type.
    pub events_emitted: IntCounterVec,
    /// Events durable in the outbox and not yet acknowledged downstream.
    pub outbox_depth: IntGauge,
    /// Time from a batch's first message to its durable commit.
    pub batch_duration: Histogram,
    /// Time from consuming a face to the broker acknowledging its FaceAssigned event.
    pub face_to_event: Histogram,
    /// Faces in the index.
    pub index_faces: IntGauge,
    /// Points of erased faces the index still holds (filtered from every result) until a
    /// compaction.
    pub index_tombstones: IntGauge,
    /// Faces still to come before a compaction running beside the stream is swapped in (0: none
    /// under way).
    pub index_compaction_faces_left: IntGauge,
    /// Clusters (connected components), singletons included.
    pub clusters: IntGauge,
    pub merges: IntCounter,
    pub splits: IntCounter,
    /// Sum over assigned partitions of (high watermark - next offset to read).
    pub consumer_lag: IntGauge,
    /// Messages the source never saw: the next offset read jumped past the durable position
    /// (retention deleted them before they were consumed). Data loss upstream of us.
    pub offset_gap_messages: IntCounter,
    /// Kafka client errors seen (they are retried), by kind.
    pub kafka_errors: IntCounterVec,
    /// Operator API requests, by outcome (`api::Outcome`: ok, bad_request, unauthorized,
    /// not_found, too_large, unavailable).
    pub api_requests: IntCounterVec,
    pub commands: IntCounterVec,
    /// 1 once state is loaded and the consumer is running, and no domain is blocked or split
    /// (what /readyz answers).
    pub ready: IntGauge,
    /// Domains whose state this process holds open.
    pub domains_open: IntGauge,
    /// Assigned partitions whose domain cannot be served here (state missing while the group
    /// has committed offsets, state locked or unreadable); they are paused, the others go on.
    pub domains_blocked: IntGauge,
    /// Input partitions assigned to this process.
    pub partitions_assigned: IntGauge,
    /// Single mode: input partitions assigned to other processes. Above 0, this process's one
    /// domain is split across processes (each holds part of its faces). 0 in per-partition mode.
    pub partitions_not_assigned: IntGauge,
    /// Faces in each open domain's state.
    pub domain_faces: IntGaugeVec,
    /// Events in each open domain's outbox, not yet acknowledged downstream.
    pub domain_outbox_depth: IntGaugeVec,
    /// 1 while a domain's partition is assigned here but blocked (see `domains_blocked`).
    pub domain_blocked: IntGaugeVec,
    /// The edge threshold each open domain's engine runs with (`engine.t1`, or the threshold the
    /// calibration read off another space's stream, which rises as the stream doubles).
    pub domain_edge_threshold: GaugeVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let ns = "clip_cluster";
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help).namespace(ns))
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help).namespace(ns), &[label])
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let seconds = |name: &str, help: &str| {
            let c = Counter::with_opts(Opts::new(name, help).namespace(ns))
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(ns))
                .expect("static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help).namespace(ns), &[label])
                .expect("static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace(ns)
                    .buckets(latency_buckets()),
            )
            .expect("static metric definition is valid");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        Self {
            faces_consumed: counter(
                "faces_consumed_total",
                "Messages read from the input topics.",
            ),
            faces_applied: counter(
                "faces_applied_total",
                "Faces applied to the clustering state.",
            ),
            faces_duplicate: counter(
                "faces_duplicate_total",
                "Faces whose id was already applied (redeliveries); no change.",
            ),
            faces_erased: counter_vec(
                "faces_erased_total",
                "Faces erased, by reason (face, cluster, source, retention).",
                "reason",
            ),
            faces_erased_redelivered: counter(
                "faces_erased_redelivered_total",
                "Messages carrying the id of an erased face: refused, not applied again.",
            ),
            proxies_refreshed: counter(
                "proxies_refreshed_total",
                "Proxies of older faces recomputed and re-linked after an insertion (proxy.refresh_per_insert).",
            ),
            faces_embedded: counter(
                "faces_embedded_total",
                "Image messages embedded into identity vectors by this process.",
            ),
            faces_low_quality: counter(
                "faces_low_quality_total",
                "Faces assigned below quality.min_score: held to one edge, other links only when near-certain (quality.weak_margin).",
            ),
            cluster_rule_local: counter(
                "cluster_rule_local_total",
                "Insertions whose connected part of the kept graph was over engine.support_region: the cluster-level rule applied to the clusters touched only.",
            ),
            index_snapshot_seconds: seconds(
                "index_snapshot_seconds_total",
                "Time spent writing the HNSW snapshot every index.snapshot_every_faces faces: the batch waits meanwhile, and a dump writes every point, so each takes longer as the index grows.",
            ),
            faces_waiting: counter(
                "faces_calibration_waiting_total",
                "Faces stored to wait for a new state's calibration decision (calibration.warmup); applied when it is made.",
            ),
            embed_duration: histogram(
                "embed_batch_duration_seconds",
                "Time to embed one batch's images (decode, chip, network).",
            ),
            embed_located: counter_vec(
                "embed_located_total",
                "Embedded images by how the face was located: detected, or the fixed box after no_face / face_uncertain.",
                "outcome",
            ),
            faces_rejected: counter_vec(
                "faces_rejected_total",
                "Messages rejected, by reason; each is dead-lettered.",
                "reason",
            ),
            dead_letters: counter(
                "dead_letters_total",
                "Messages written to the dead-letter topic.",
            ),
            events_emitted: counter_vec(
                "events_emitted_total",
                "Events acknowledged by the broker on the events topic, by type.",
                "type",
            ),
            outbox_depth: gauge(
                "outbox_depth_events",
                "Durable events not yet acknowledged downstream.",
            ),
            batch_duration: histogram(
                "batch_duration_seconds",
                "Time from a batch's first message to its durable commit.",
            ),
            face_to_event: histogram(
                "face_to_event_seconds",
                "Time from consuming a face to the acknowledgement of its assignment event.",
            ),
            index_faces: gauge("index_faces", "Faces in the HNSW index."),
            index_tombstones: gauge(
                "index_tombstones",
                "Points of erased faces the HNSW index still holds (filtered) until a compaction.",
            ),
            index_compaction_faces_left: gauge(
                "index_compaction_faces_left",
                "Faces still to come before the compaction running beside the stream is swapped in (0: none).",
            ),
            clusters: gauge("clusters", "Clusters, singletons included."),
            merges: counter("merges_total", "Cluster merges."),
            splits: counter("splits_total", "Cluster splits."),
            consumer_lag: gauge(
                "consumer_lag_messages",
                "Messages behind the high watermark, summed over assigned partitions.",
            ),
            offset_gap_messages: counter(
                "offset_gap_messages_total",
                "Messages skipped because the next offset read was past the durable position.",
            ),
            kafka_errors: counter_vec(
                "kafka_errors_total",
                "Kafka client errors (retried), by kind.",
                "kind",
            ),
            api_requests: counter_vec(
                "api_requests_total",
                "Operator API requests, by outcome.",
                "outcome",
            ),
            commands: counter_vec(
                "commands_total",
                "Operator commands read from the command topic, by outcome (applied, duplicate, refused, bad).",
                "outcome",
            ),
            ready: gauge(
                "ready",
                "1 once state is loaded and the consumer runs, with no domain blocked or split.",
            ),
            domains_open: gauge("domains_open", "Domains whose state is open here."),
            domains_blocked: gauge(
                "domains_blocked",
                "Assigned partitions paused because their domain's state is missing, locked or unreadable.",
            ),
            partitions_assigned: gauge(
                "partitions_assigned",
                "Input partitions assigned to this process.",
            ),
            partitions_not_assigned: gauge(
                "partitions_not_assigned",
                "Single mode: input partitions assigned elsewhere (the one domain is split when above 0).",
            ),
            domain_faces: gauge_vec(
                "domain_faces",
                "Faces in each open domain's state.",
                "domain",
            ),
            domain_outbox_depth: gauge_vec(
                "domain_outbox_depth_events",
                "Durable events of each open domain not yet acknowledged downstream.",
                "domain",
            ),
            domain_edge_threshold: {
                let g = GaugeVec::new(
                    Opts::new(
                        "domain_edge_threshold",
                        "The edge threshold each open domain's engine runs with: engine.t1 with the trained parts, or the threshold calibrated from another space's stream (read again as the stream doubles; it only rises).",
                    )
                    .namespace(ns),
                    &["domain"],
                )
                .expect("static metric definition is valid");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric name");
                g
            },
            domain_blocked: gauge_vec(
                "domain_blocked",
                "1 while the domain's partition is assigned here but blocked.",
                "domain",
            ),
            registry,
        }
    }

    /// Events acknowledged downstream, all types together.
    pub fn events_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.events_emitted
            .collect()
            .iter()
            .flat_map(|mf| mf.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Every series name the exposition can contain (histograms with their suffixes).
    pub fn series_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for mf in self.registry.gather() {
            let n = mf.name().to_string();
            if mf.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
                for s in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{n}{s}"));
                }
            }
            names.push(n);
        }
        names
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
