//! Range checks that serde's types cannot express, each naming the key and what is allowed.

use super::*;

impl Config {
    /// Range checks that serde's types cannot express, each naming the key and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, value: impl ToString, allowed: &'static str) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                allowed,
            }
        }
        let r = &self.retention;
        if let Err(e) = r.max_age_ms() {
            return Err(ConfigError::Invalid {
                key: "retention.max_age",
                value: e,
                allowed: "a whole number and a unit (d, h, m, s), or empty for none",
            });
        }
        if !(1..=86_400).contains(&r.sweep_interval_s) {
            return Err(bad(
                "retention.sweep_interval_s",
                r.sweep_interval_s,
                "must be in 1..=86400",
            ));
        }
        if !(1..=1_000_000).contains(&r.max_per_sweep) {
            return Err(bad(
                "retention.max_per_sweep",
                r.max_per_sweep,
                "must be in 1..=1000000",
            ));
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
        if !(1..=4096).contains(&m.min_face_px) {
            return Err(bad(
                "embed.min_face_px",
                m.min_face_px,
                "must be in 1..=4096",
            ));
        }
        if !(-2.0..=2.0).contains(&m.min_face_score) {
            return Err(bad(
                "embed.min_face_score",
                m.min_face_score,
                "must be in [-2, 2] (dlib's threshold is 0)",
            ));
        }
        if !(0.0..=1.0).contains(&m.max_face_outside) {
            return Err(bad(
                "embed.max_face_outside",
                m.max_face_outside,
                "must be in [0, 1] (1 keeps faces however far they are cut by the border)",
            ));
        }
        if m.faces_per_image == crate::config::FacesPerImage::All
            && (m.locate != crate::config::Locate::Detect || m.chip != ChipKind::Aligned)
        {
            return Err(bad(
                "embed.faces_per_image",
                "\"all\"",
                "needs locate = \"detect\" and chip = \"aligned\" (only the detector finds several faces)",
            ));
        }
        if !(256..=8192).contains(&m.detect_max_side) {
            return Err(bad(
                "embed.detect_max_side",
                m.detect_max_side,
                "must be in 256..=8192",
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
            ("calibration.z_max", c.z_max),
            ("calibration.tolerance", c.tolerance),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(key, v, "must be a finite number > 0"));
            }
        }
        if !(c.valley_margin.is_finite() && c.valley_margin >= 0.0) {
            return Err(bad(
                "calibration.valley_margin",
                c.valley_margin,
                "must be a finite number >= 0",
            ));
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
        if !(0.0..=1.0).contains(&i.compact_fraction) {
            return Err(bad(
                "index.compact_fraction",
                i.compact_fraction,
                "must be in [0, 1]",
            ));
        }
        if !(0.0..=100.0).contains(&i.compact_window) {
            return Err(bad(
                "index.compact_window",
                i.compact_window,
                "must be in [0, 100]",
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
        let others = [&k.events_topic, &k.dead_letter_topic, &k.embeddings_topic];
        if !k.commands_topic.is_empty()
            && (k.input_topics.contains(&k.commands_topic) || others.contains(&&k.commands_topic))
        {
            return Err(bad(
                "kafka.commands_topic",
                format!("{:?}", k.commands_topic),
                "must be a topic of its own (not an input, events, embeddings or dead-letter topic)",
            ));
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
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "api.listen",
                &self.api.listen,
                "must be an address like 127.0.0.1:9465",
            ));
        }
        if !(1024..=64 << 20).contains(&self.api.max_body_bytes) {
            return Err(bad(
                "api.max_body_bytes",
                self.api.max_body_bytes,
                "must be in 1024..=67108864",
            ));
        }
        if !(16..=512).contains(&self.api.thumbnail_px) {
            return Err(bad(
                "api.thumbnail_px",
                self.api.thumbnail_px,
                "must be in 16..=512",
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
}

/// "cpu", "cuda" or "cuda:N".
fn is_device(name: &str) -> bool {
    name == "cpu"
        || name == "cuda"
        || name
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
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
            (
                "[embed]\nlandmark_passes = 1\naverage_passes = true\n",
                "embed.average_passes",
            ),
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
