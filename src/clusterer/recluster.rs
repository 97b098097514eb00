//! `clip-cluster recluster`: a state rebuilt under a new configuration from an old state's
//! stored vectors, carrying its constraints, names, cluster ids, erased ids and input
//! positions, so that a changed configuration (another threshold, rule, proxy or edge head)
//! does not mean starting from nothing. The old state is only read; the new one is written at
//! the configuration's `store.path`, which must not hold a state yet.
//!
//! Order: faces in their old order (the vectors as stored, so the embedder is not re-run), the
//! calibration decided afresh under the new configuration from the first faces as a stream
//! would, the commands' face pairs held, the rule computed once with the old names as tags and
//! the ids mapped (`Engine::regroup_as`), erased ids held as tombstones; then one commit (fsync)
//! with the positions, the retention clock carried, and an index snapshot.

use std::collections::HashMap;
use std::path::Path;

use tracing::info;

use super::*;
use crate::engine::recluster::Regrouped;
use crate::engine::Face;

/// What a recluster did (printed by the command as JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReclusterReport {
    pub from: String,
    pub to: String,
    /// The old state's id (in the `Reclustered` event) and the new one's.
    pub from_state: String,
    pub state: String,
    pub faces: u64,
    /// Erased ids carried as tombstones (refused for good in the new state too).
    pub erased: u64,
    pub commands: u64,
    #[serde(flatten)]
    pub regrouped: Regrouped,
    /// Events the new state's outbox holds for subscribers (moves, names, `Reclustered`).
    pub events: u64,
    /// The calibration decision under the new configuration.
    pub decision: String,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReclusterError {
    #[error(transparent)]
    Clusterer(#[from] ClustererError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

/// Rebuilds the state at `from` under `cfg` into `cfg.store.path`.
pub fn recluster(from: &Path, cfg: &Config) -> Result<ReclusterReport, ReclusterError> {
    let started = std::time::Instant::now();
    let to = cfg.store.path.clone();
    if Store::holds_state(&to) {
        return Err(ReclusterError::Refused(format!(
            "{} holds a state already: give an empty or new store.path for the re-clustered state (the old one is only read)",
            to.display()
        )));
    }
    if matches!((from.canonicalize(), to.canonicalize()), (Ok(a), Ok(b)) if a == b) {
        return Err(ReclusterError::Refused(
            "the old and the new state are one directory".into(),
        ));
    }
    let (old, written) = Store::open_as_written(from, cfg.store.cache_bytes)?;
    let want = fingerprint(cfg);
    if written.model != want.model || written.dim != want.dim {
        return Err(ReclusterError::Refused(format!(
            "the state holds {} vectors of {} dimensions and the configuration names {} of {}: re-clustering keeps the stored vectors, so the model must stay; embed the faces anew for another model",
            written.model, written.dim, want.model, want.dim
        )));
    }
    if let (Some(a), Some(b)) = (&written.embedder, &want.embedder) {
        if a != b {
            return Err(ReclusterError::Refused(format!(
                "the state's vectors were embedded with {a} and the configuration embeds with {b}: new faces would not be comparable with the stored ones; set the [embed] keys as they were (or embed.enabled = false for a vectors-only role)"
            )));
        }
    }
    let from_state = old.state_id()?;
    let restored = old.load()?;
    let d = cfg.model.dim;
    let n_old = restored.face_ids.len();
    let cluster_of_label: HashMap<u32, u64> = restored
        .comps
        .iter()
        .map(|(l, c)| (*l, c.cluster_id))
        .collect();
    let variants: HashMap<u32, &Vec<f32>> =
        restored.variants.iter().map(|(s, v)| (*s, v)).collect();

    // The live faces, in their old order; each is built from the stored records as it goes in.
    let live: Vec<u32> = (0..n_old as u32)
        .filter(|s| restored.erased.binary_search(s).is_err())
        .collect();
    let identity = |seq: u32| &restored.identities[seq as usize * d..(seq as usize + 1) * d];

    // The calibration, decided as a new stream under this configuration would decide it.
    let calibration = cfg.calibration_params().map_err(ClustererError::from)?;
    if live.is_empty() {
        let waiting = old.waiting()?.len();
        return Err(ReclusterError::Refused(if waiting > 0 {
            format!("the state is still in its calibration warm-up ({waiting} faces wait, none is clustered yet): open it with the configuration it was made with until it decides, or replay the stream into a new store.path")
        } else {
            "the state holds no live face: nothing to re-cluster".into()
        }));
    }
    let mut decision = if calibration.needs_warmup() {
        let mut rows = Vec::with_capacity(calibration.warmup * d);
        for &seq in live.iter().take(calibration.warmup) {
            rows.extend_from_slice(identity(seq));
        }
        calibration.decide_rows(&rows, d)
    } else {
        crate::engine::calibrate::Decision::Trained { seen: None }
    };
    log_decision(&decision);
    let (params, proxy, scorer) = stages_for(cfg, &decision)?;
    let mut hnsw = cfg.hnsw_params();
    hnsw.capacity_hint = hnsw.capacity_hint.max(live.len());
    let mut engine = Engine::with_stages(params, HnswIndex::new(hnsw), proxy, scorer);

    let mut new_seq: HashMap<u32, u32> = HashMap::with_capacity(live.len());
    let mut old_cluster: Vec<u64> = Vec::with_capacity(live.len());
    for (i, &seq) in live.iter().enumerate() {
        let face = Face {
            face_id: restored.face_ids[seq as usize].clone(),
            vector: identity(seq).to_vec(),
            variants: variants.get(&seq).map(|v| v.to_vec()).unwrap_or_default(),
            meta: old.face_meta(seq)?.unwrap_or_default(),
            thumbnail: Vec::new(),
        };
        match engine.insert_face(face.view()) {
            Ok((Outcome::Applied { seq: s }, _)) => {
                new_seq.insert(seq, s);
                old_cluster.push(cluster_of_label[&restored.faces[seq as usize].comp]);
                // As a new stream of these faces would read its threshold again.
                if let Some((d, _)) = engine.refit_calibration(&calibration, &decision, i + 1) {
                    decision = d;
                }
            }
            other => {
                return Err(ReclusterError::Refused(format!(
                    "face {} of the old state does not apply: {other:?}",
                    face.face_id
                )))
            }
        }
        if (i + 1) % 100_000 == 0 {
            info!(faces = i + 1, of = live.len(), "recluster: faces inserted");
        }
    }
    // The insertions' events describe building the new state, not news for subscribers.
    engine.drop_pending_events();

    // The commands, their pairs in the new sequence numbers.
    let mut commands = restored.commands.clone();
    commands.sort_by_key(|c| c.seq);
    let map = |pairs: &[(u32, u32)]| -> Vec<(u32, u32)> {
        pairs
            .iter()
            .filter_map(|(a, b)| Some((*new_seq.get(a)?, *new_seq.get(b)?)))
            .collect()
    };
    let n_commands = commands.len() as u64;
    let commands: Vec<_> = commands
        .into_iter()
        .map(|mut c| {
            c.must = map(&c.must);
            c.cannot = map(&c.cannot);
            c
        })
        .collect();
    engine.hold_commands(commands);

    let names: HashMap<u64, String> = restored.names.iter().cloned().collect();
    let fresh_from = restored.counters.next_cluster_id;
    // Tombstones come after the live faces; their old cluster is never read.
    let regrouped = engine.regroup_as(&old_cluster, &names, fresh_from, &from_state);
    for &seq in &restored.erased {
        engine.add_tombstone(&restored.face_ids[seq as usize]);
    }

    // One commit: faces, clusters, names, commands, tombstones, events, decision, positions.
    let store = Store::open(&to, &want, cfg.store.cache_bytes)?;
    let changes = super::take_changes(&mut engine, &store);
    let events = changes.events.len() as u64;
    let extras = crate::store::Extras {
        decision: calibration.needs_warmup().then_some(decision),
        ..Default::default()
    };
    store.commit_with(&changes, &extras, &old.positions()?)?;
    let mut times = Vec::with_capacity(live.len());
    for seq in &live {
        if let Some(at) = old.face_since(*seq)? {
            times.push((new_seq[seq], at));
        }
    }
    store.set_face_times(&times)?;
    // Thumbnails a chunk at a time (they would be gigabytes at a million faces).
    for chunk in live.chunks(10_000) {
        let mut thumbnails = Vec::new();
        for seq in chunk {
            if let Some(t) = old.thumbnail(*seq)? {
                thumbnails.push((new_seq[seq], t));
            }
        }
        store.put_thumbnails(&thumbnails)?;
    }
    let n = engine.n_faces() as u32;
    if engine.index().len() > 0 {
        snapshot(&store, &to.join("index"), engine.index(), n, &[])?;
    }
    let report = ReclusterReport {
        from: from.display().to_string(),
        to: to.display().to_string(),
        from_state,
        state: store.state_id()?,
        faces: live.len() as u64,
        erased: restored.erased.len() as u64,
        commands: n_commands,
        regrouped,
        events,
        decision: match decision {
            crate::engine::calibrate::Decision::Trained { .. } => "trained".into(),
            crate::engine::calibrate::Decision::Stream { t1, .. } => format!("stream t1={t1}"),
        },
        seconds: started.elapsed().as_secs_f64(),
    };
    info!(
        faces = report.faces,
        clusters_before = report.regrouped.clusters_before,
        clusters_after = report.regrouped.clusters_after,
        moved = report.regrouped.moved,
        "recluster: the new state is written"
    );
    Ok(report)
}
