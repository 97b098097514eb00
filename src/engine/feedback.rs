//! Operator feedback that sticks: merge, split, "not this person", assign, name and undo, kept as
//! constraints that every later re-link honours (`rule::partition_with`, `Engine::supported`).
//!
//! - A must-link between two faces holds: they are one cluster whatever the edges say (it is an
//!   edge that always merges and that the walks follow).
//! - A cannot-link is never crossed: no merge puts its two faces in one cluster. The faces of one
//!   photo get one between every two of them (`EngineParams::same_image_cannot_link`).
//! - A name belongs to a cluster id and follows it through merges and splits; two clusters with
//!   different names are never merged, by the rule or by an operator (a reported conflict).
//!
//! Commands are resolved to face pairs once, when applied, and stored with the pairs; replaying
//! the stored pairs rebuilds the same constraints on restart. A command is idempotent by its id:
//! the same command again returns its first report marked `duplicate`; another command under a
//! used id is a conflict. Every command is validated before anything changes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::*;

/// The longest name and command id accepted, in characters.
pub const MAX_TEXT: usize = 200;

/// One operator command's body (the `op` field selects the variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// These clusters are one person.
    Merge { cluster_ids: Vec<u64> },
    /// These faces (of one cluster) are another person than the rest of it; they leave together.
    Split { face_ids: Vec<String> },
    /// This face is not the person of that cluster.
    NotInCluster { face_id: String, cluster_id: u64 },
    /// This face is the person of that cluster.
    Assign { face_id: String, cluster_id: u64 },
    /// Names a cluster; `null` clears the name.
    Name {
        cluster_id: u64,
        #[serde(default)]
        name: Option<String>,
    },
    /// Takes back an earlier command's constraints (and, for a name, restores the one before).
    /// On the wire `target_command_id` (the command's own id is `command_id`); records stored
    /// before the rename read under the old name.
    Undo {
        #[serde(rename = "target_command_id", alias = "command_id")]
        command_id: String,
    },
}

impl Op {
    pub fn label(&self) -> &'static str {
        match self {
            Op::Merge { .. } => "merge",
            Op::Split { .. } => "split",
            Op::NotInCluster { .. } => "not_in_cluster",
            Op::Assign { .. } => "assign",
            Op::Name { .. } => "name",
            Op::Undo { .. } => "undo",
        }
    }
}

/// A command: an id chosen by the sender (idempotency key) and its operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: String,
    pub op: Op,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackReport {
    pub command_id: String,
    pub op: String,
    /// The command had been applied before: nothing changed now.
    pub duplicate: bool,
    /// The clusters of the command's faces afterwards (sorted).
    pub clusters: Vec<u64>,
    /// Events the command emitted (its merges, splits, moves, names and `FeedbackApplied`).
    pub events: usize,
}

/// A command as stored: resolved to the face pairs it constrains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Order of application in this state.
    pub seq: u64,
    pub command: Command,
    pub must: Vec<(u32, u32)>,
    pub cannot: Vec<(u32, u32)>,
    /// For `name`: the cluster's name before.
    #[serde(default)]
    pub previous_name: Option<String>,
    /// Taken back by a later `undo`.
    #[serde(default)]
    pub undone: bool,
    pub report: FeedbackReport,
}

/// Why a command was refused; nothing changed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackError {
    UnknownCluster(u64),
    UnknownFace(String),
    UnknownCommand(String),
    /// The command contradicts the constraints held (or reuses a command id).
    Conflict(String),
    /// The command is malformed.
    Invalid(String),
    /// The state cannot take commands yet (its calibration warm-up).
    NotReady(String),
}

impl std::fmt::Display for FeedbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedbackError::UnknownCluster(c) => write!(f, "no cluster {c}"),
            FeedbackError::UnknownFace(id) => write!(f, "no face {id:?}"),
            FeedbackError::UnknownCommand(id) => write!(f, "no command {id:?} was applied"),
            FeedbackError::Conflict(m) | FeedbackError::Invalid(m) | FeedbackError::NotReady(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for FeedbackError {}

/// The constraints an engine holds. Pair lists are multisets (two commands may link the same
/// pair; undoing one keeps the other) and symmetric.
#[derive(Debug, Clone, Default)]
pub struct Constraints {
    pub(super) must: HashMap<u32, Vec<u32>>,
    pub(super) cannot: HashMap<u32, Vec<u32>>,
    pub(super) names: HashMap<u64, String>,
    pub(super) by_image: HashMap<Box<str>, Vec<u32>>,
    pub(super) commands: HashMap<String, CommandRecord>,
    pub(super) n_commands: u64,
}

fn link(m: &mut HashMap<u32, Vec<u32>>, a: u32, b: u32) {
    m.entry(a).or_default().push(b);
    m.entry(b).or_default().push(a);
}

fn unlink(m: &mut HashMap<u32, Vec<u32>>, a: u32, b: u32) {
    for (x, y) in [(a, b), (b, a)] {
        if let Some(v) = m.get_mut(&x) {
            if let Some(i) = v.iter().position(|&z| z == y) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                m.remove(&x);
            }
        }
    }
}

fn pairs(m: &HashMap<u32, Vec<u32>>) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = m
        .iter()
        .flat_map(|(&a, bs)| bs.iter().filter(move |&&b| a < b).map(move |&b| (a, b)))
        .collect();
    v.sort_unstable();
    v
}

impl Constraints {
    /// No constraint at all: the cluster rule runs unconstrained.
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.cannot.is_empty() && self.names.is_empty()
    }
    /// Every must-link pair (a < b; a pair linked twice appears twice), sorted.
    pub fn must_pairs(&self) -> Vec<(u32, u32)> {
        pairs(&self.must)
    }
    /// Every cannot-link pair, as `must_pairs`.
    pub fn cannot_pairs(&self) -> Vec<(u32, u32)> {
        pairs(&self.cannot)
    }
    pub fn names(&self) -> &HashMap<u64, String> {
        &self.names
    }
    pub fn command(&self, command_id: &str) -> Option<&CommandRecord> {
        self.commands.get(command_id)
    }
    pub(super) fn cannot_of(&self, x: u32) -> &[u32] {
        self.cannot.get(&x).map(Vec::as_slice).unwrap_or(&[])
    }
    pub(super) fn must_of(&self, x: u32) -> &[u32] {
        self.must.get(&x).map(Vec::as_slice).unwrap_or(&[])
    }
    /// Adds face `seq` of photo `image`: a cannot-link to every earlier face of it.
    pub(super) fn add_photo_face(&mut self, image: &str, seq: u32) {
        let earlier = self.by_image.entry(image.into()).or_default();
        let before = std::mem::take(earlier);
        for &o in &before {
            link(&mut self.cannot, o, seq);
        }
        let earlier = self.by_image.entry(image.into()).or_default();
        *earlier = before;
        earlier.push(seq);
    }
    /// Holds a command's pairs (when applied, or on restore when not undone).
    pub(super) fn hold(&mut self, r: &CommandRecord) {
        for &(a, b) in &r.must {
            link(&mut self.must, a, b);
        }
        for &(a, b) in &r.cannot {
            link(&mut self.cannot, a, b);
        }
    }
    /// Drops every constraint on face `x` (erased): its must- and cannot-links and its photo.
    pub(super) fn forget_face(&mut self, x: u32) {
        for m in [&mut self.must, &mut self.cannot] {
            // Once per link: a pair linked twice is unlinked twice.
            for o in m.get(&x).cloned().unwrap_or_default() {
                unlink(m, x, o);
            }
        }
        self.by_image.retain(|_, faces| {
            faces.retain(|&z| z != x);
            !faces.is_empty()
        });
    }

    /// Removes face `x` (erased, id `face_id`) from the stored commands: their pairs and the
    /// face ids they name (an undo of one then takes back only what is left). Returns the
    /// records changed, in order.
    pub(super) fn scrub_commands(&mut self, x: u32, face_id: &str) -> Vec<CommandRecord> {
        let mut changed = Vec::new();
        for r in self.commands.values_mut() {
            let before = (r.must.len(), r.cannot.len());
            r.must.retain(|&(a, b)| a != x && b != x);
            r.cannot.retain(|&(a, b)| a != x && b != x);
            let mut named = false;
            match &mut r.command.op {
                Op::Split { face_ids } => {
                    let n = face_ids.len();
                    face_ids.retain(|f| f != face_id);
                    named = face_ids.len() != n;
                }
                Op::NotInCluster { face_id: f, .. } | Op::Assign { face_id: f, .. }
                    if f == face_id =>
                {
                    f.clear();
                    named = true;
                }
                _ => {}
            }
            if named || before != (r.must.len(), r.cannot.len()) {
                changed.push(r.clone());
            }
        }
        changed.sort_by_key(|r| r.seq);
        changed
    }

    fn release(&mut self, r: &CommandRecord) {
        for &(a, b) in &r.must {
            unlink(&mut self.must, a, b);
        }
        for &(a, b) in &r.cannot {
            unlink(&mut self.cannot, a, b);
        }
    }
}

/// A checked name: trimmed, non-empty, at most `MAX_TEXT` characters, no control characters.
fn check_name(name: &str) -> Result<String, FeedbackError> {
    let t = name.trim();
    if t.is_empty() {
        return Err(FeedbackError::Invalid(
            "name is empty (send null to clear a name)".into(),
        ));
    }
    if t.chars().count() > MAX_TEXT {
        return Err(FeedbackError::Invalid(format!(
            "name longer than {MAX_TEXT} characters"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(FeedbackError::Invalid(
            "name contains control characters".into(),
        ));
    }
    Ok(t.to_string())
}

/// What a validated command will do.
struct Plan {
    must: Vec<(u32, u32)>,
    cannot: Vec<(u32, u32)>,
    /// (cluster id, new name) for `name`; for `undo` of a name, the name restored.
    rename: Option<(u64, Option<String>)>,
    /// Faces whose clusters are recomputed.
    seeds: Vec<u32>,
    undo: Option<String>,
    /// For `assign`: (face, anchor) — the face joins the anchor's cluster at once, so that the
    /// recomputation sees it under the cluster's name.
    moves: Option<(u32, u32)>,
}

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// The constraints held (feedback and the photo rule).
    pub fn constraints(&self) -> &Constraints {
        &self.rules
    }

    pub fn cluster_name(&self, cluster_id: u64) -> Option<&str> {
        self.rules.names.get(&cluster_id).map(String::as_str)
    }

    /// The label holding cluster `id`, if it exists.
    fn label_of(&self, id: u64) -> Option<u32> {
        if id == PENDING {
            return None;
        }
        self.comps
            .iter()
            .position(|c| c.size > 0 && c.cluster_id == id)
            .map(|l| l as u32)
    }

    /// Members of cluster `id` by sequence, oldest first (one pass over the faces).
    pub(super) fn members(&self, id: u64) -> Result<Vec<u32>, FeedbackError> {
        let label = self.label_of(id).ok_or(FeedbackError::UnknownCluster(id))?;
        Ok((0..self.faces.len() as u32)
            .filter(|&x| self.faces[x as usize].comp == label)
            .collect())
    }

    fn seq_checked(&self, face_id: &str) -> Result<u32, FeedbackError> {
        self.seq_of(face_id)
            .filter(|&s| !self.is_erased(s))
            .ok_or_else(|| FeedbackError::UnknownFace(face_id.to_string()))
    }

    /// Applies one operator command and returns its report and the events it emitted (also in
    /// the change set). On error nothing changed.
    pub fn apply_feedback(
        &mut self,
        cmd: &Command,
    ) -> Result<(FeedbackReport, Vec<Event>), FeedbackError> {
        let id = cmd.command_id.trim();
        if id.is_empty() || id.chars().count() > MAX_TEXT || id != cmd.command_id {
            return Err(FeedbackError::Invalid(format!(
                "command_id must be 1 to {MAX_TEXT} characters without surrounding spaces"
            )));
        }
        if let Some(done) = self.rules.commands.get(id) {
            if done.command.op == cmd.op {
                let mut r = done.report.clone();
                r.duplicate = true;
                return Ok((r, Vec::new()));
            }
            return Err(FeedbackError::Conflict(format!(
                "command id {id:?} was already used for another command ({})",
                done.command.op.label()
            )));
        }
        let plan = self.plan(&cmd.op)?;

        // Validated: from here on nothing fails.
        let cause = self.faces.len() as u32;
        let mut events = Vec::new();
        let previous_name = match &plan.rename {
            Some((c, name)) => {
                let previous = self.rules.names.get(c).cloned();
                if previous != *name {
                    self.set_name(*c, name.clone());
                    events.push(self.emit(
                        cause,
                        Event::ClusterNamed {
                            cluster_id: *c,
                            name: name.clone(),
                            previous: previous.clone(),
                        },
                    ));
                }
                previous
            }
            None => None,
        };
        let mut record = CommandRecord {
            seq: self.rules.n_commands,
            command: cmd.clone(),
            must: plan.must,
            cannot: plan.cannot,
            previous_name: matches!(cmd.op, Op::Name { .. })
                .then_some(previous_name)
                .flatten(),
            undone: false,
            report: FeedbackReport {
                command_id: id.to_string(),
                op: cmd.op.label().to_string(),
                duplicate: false,
                clusters: Vec::new(),
                events: 0,
            },
        };
        self.rules.hold(&record);
        if let Some(target) = &plan.undo {
            let mut t = self.rules.commands[target].clone();
            self.rules.release(&t);
            t.undone = true;
            if self.track {
                self.changes.commands.push(t.clone());
            }
            self.rules.commands.insert(target.clone(), t);
        }
        if let Some((x, anchor)) = plan.moves {
            self.move_face(x, anchor, cause, &mut events);
        }
        self.relink_constrained(&plan.seeds, cause, &mut events);
        let mut clusters: Vec<u64> = plan.seeds.iter().map(|&s| self.cluster_of(s)).collect();
        if let Some((c, _)) = &plan.rename {
            clusters.push(*c);
        }
        clusters.sort_unstable();
        clusters.dedup();
        events.push(self.emit(
            cause,
            Event::FeedbackApplied {
                command_id: id.to_string(),
                op: cmd.op.label().to_string(),
                clusters: clusters.clone(),
            },
        ));
        record.report.clusters = clusters;
        record.report.events = events.len();
        self.rules.n_commands += 1;
        if self.track {
            self.changes.commands.push(record.clone());
        }
        let report = record.report.clone();
        self.rules.commands.insert(id.to_string(), record);
        Ok((report, events))
    }

    /// Validates a command against the state and resolves it to face pairs.
    fn plan(&self, op: &Op) -> Result<Plan, FeedbackError> {
        let mut plan = Plan {
            must: Vec::new(),
            cannot: Vec::new(),
            rename: None,
            seeds: Vec::new(),
            undo: None,
            moves: None,
        };
        let conflict = |m: String| Err(FeedbackError::Conflict(m));
        match op {
            Op::Merge { cluster_ids } => {
                let mut ids = cluster_ids.clone();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() < 2 {
                    return Err(FeedbackError::Invalid(
                        "merge needs at least two different cluster ids".into(),
                    ));
                }
                let mut groups = Vec::with_capacity(ids.len());
                for &c in &ids {
                    groups.push(self.members(c)?);
                }
                let mut named: Vec<&str> =
                    ids.iter().filter_map(|&c| self.cluster_name(c)).collect();
                named.sort_unstable();
                named.dedup();
                if named.len() > 1 {
                    return conflict(format!(
                        "the clusters have different names ({}): rename or clear one first",
                        named.join(", ")
                    ));
                }
                let labels: Vec<u32> = groups
                    .iter()
                    .map(|g| self.faces[g[0] as usize].comp)
                    .collect();
                for g in &groups {
                    for &x in g {
                        for &y in self.rules.cannot_of(x) {
                            let ly = self.faces[y as usize].comp;
                            if ly != self.faces[x as usize].comp && labels.contains(&ly) {
                                return conflict(format!(
                                    "faces {:?} and {:?} must stay apart (a cannot-link)",
                                    self.face_id(x),
                                    self.face_id(y)
                                ));
                            }
                        }
                    }
                }
                let first = groups[0][0];
                for g in &groups[1..] {
                    plan.must.push(pair(first, g[0]));
                }
                plan.seeds = groups.iter().map(|g| g[0]).collect();
            }
            Op::Split { face_ids } => {
                let mut split = Vec::with_capacity(face_ids.len());
                for f in face_ids {
                    split.push(self.seq_checked(f)?);
                }
                split.sort_unstable();
                split.dedup();
                let Some(&s0) = split.first() else {
                    return Err(FeedbackError::Invalid(
                        "split needs at least one face id".into(),
                    ));
                };
                let label = self.faces[s0 as usize].comp;
                if split.iter().any(|&x| self.faces[x as usize].comp != label) {
                    return Err(FeedbackError::Invalid(
                        "the faces of a split must all be in one cluster".into(),
                    ));
                }
                let rest: Vec<u32> = self
                    .members(self.comps[label as usize].cluster_id)?
                    .into_iter()
                    .filter(|x| split.binary_search(x).is_err())
                    .collect();
                if rest.is_empty() {
                    return Err(FeedbackError::Invalid(
                        "the split takes every face of its cluster: nothing would remain".into(),
                    ));
                }
                for &x in &split {
                    for &y in self.rules.must_of(x) {
                        if split.binary_search(&y).is_err() {
                            return conflict(format!(
                                "face {:?} is linked to {:?}, which stays (undo that command first)",
                                self.face_id(x),
                                self.face_id(y)
                            ));
                        }
                    }
                    for &y in self.rules.cannot_of(x) {
                        if split.binary_search(&y).is_ok() {
                            return conflict(format!(
                                "faces {:?} and {:?} must stay apart and cannot leave together",
                                self.face_id(x),
                                self.face_id(y)
                            ));
                        }
                    }
                }
                plan.must = split[1..].iter().map(|&x| pair(s0, x)).collect();
                plan.cannot = rest.iter().map(|&r| pair(s0, r)).collect();
                plan.seeds = split.clone();
                plan.seeds.push(rest[0]);
            }
            Op::NotInCluster {
                face_id,
                cluster_id,
            } => {
                let x = self.seq_checked(face_id)?;
                let members: Vec<u32> = self
                    .members(*cluster_id)?
                    .into_iter()
                    .filter(|&m| m != x)
                    .collect();
                if members.is_empty() {
                    return Err(FeedbackError::Invalid(format!(
                        "face {face_id:?} is all of cluster {cluster_id}"
                    )));
                }
                if let Some(&y) = self.rules.must_of(x).iter().find(|y| members.contains(y)) {
                    return conflict(format!(
                        "face {face_id:?} is linked to {:?} of that cluster (undo that command first)",
                        self.face_id(y)
                    ));
                }
                plan.cannot = members.iter().map(|&m| pair(x, m)).collect();
                plan.seeds = vec![x, members[0]];
            }
            Op::Assign {
                face_id,
                cluster_id,
            } => {
                let x = self.seq_checked(face_id)?;
                let target = self.members(*cluster_id)?;
                let own = self.faces[x as usize].comp;
                let anchor = target[0];
                if self.faces[anchor as usize].comp != own {
                    if let Some(&y) = self.rules.cannot_of(x).iter().find(|y| target.contains(y)) {
                        return conflict(format!(
                            "face {face_id:?} and {:?} of that cluster must stay apart",
                            self.face_id(y)
                        ));
                    }
                    let mates: Vec<u32> = self
                        .members(self.comps[own as usize].cluster_id)?
                        .into_iter()
                        .filter(|&m| m != x)
                        .collect();
                    if let Some(&y) = self.rules.must_of(x).iter().find(|y| mates.contains(y)) {
                        return conflict(format!(
                            "face {face_id:?} is linked to {:?}, which stays (undo that command first)",
                            self.face_id(y)
                        ));
                    }
                    plan.moves = Some((x, anchor));
                    plan.cannot = mates.iter().map(|&m| pair(x, m)).collect();
                    plan.seeds.extend(mates.first());
                }
                if anchor != x {
                    plan.must.push(pair(x, anchor));
                }
                plan.seeds.extend([x, anchor]);
            }
            Op::Name { cluster_id, name } => {
                self.members(*cluster_id)?;
                let name = name.as_deref().map(check_name).transpose()?;
                plan.rename = Some((*cluster_id, name));
            }
            Op::Undo { command_id } => {
                let t = self
                    .rules
                    .commands
                    .get(command_id)
                    .ok_or_else(|| FeedbackError::UnknownCommand(command_id.clone()))?;
                if matches!(t.command.op, Op::Undo { .. }) {
                    return Err(FeedbackError::Invalid(
                        "an undo cannot be undone: send the original command again under a new id"
                            .into(),
                    ));
                }
                if t.undone {
                    return conflict(format!("command {command_id:?} was already undone"));
                }
                if let Op::Name { cluster_id, .. } = &t.command.op {
                    if self.label_of(*cluster_id).is_some() {
                        plan.rename = Some((*cluster_id, t.previous_name.clone()));
                    }
                }
                plan.seeds = t
                    .must
                    .iter()
                    .chain(&t.cannot)
                    .flat_map(|&(a, b)| [a, b])
                    .collect();
                plan.undo = Some(command_id.clone());
            }
        }
        plan.seeds.sort_unstable();
        plan.seeds.dedup();
        Ok(plan)
    }

    /// Moves face `x` into the cluster of `anchor` (another cluster): a move, or, when `x` was
    /// all of its cluster, a merge of that cluster into the anchor's.
    fn move_face(&mut self, x: u32, anchor: u32, cause: u32, events: &mut Vec<Event>) {
        let (from, to) = (
            self.faces[x as usize].comp,
            self.faces[anchor as usize].comp,
        );
        let (from_id, to_id) = (
            self.comps[from as usize].cluster_id,
            self.comps[to as usize].cluster_id,
        );
        self.faces[x as usize].comp = to;
        self.touch_face(x);
        self.comps[from as usize].size -= 1;
        self.comps[to as usize].size += 1;
        self.touch_comp(from);
        self.touch_comp(to);
        let event = if self.comps[from as usize].size == 0 {
            self.live_comps -= 1;
            if self.rules.names.contains_key(&from_id) {
                self.set_name(from_id, None);
            }
            Event::ClustersMerged {
                into: to_id,
                from: from_id,
                n_faces: 1,
            }
        } else {
            Event::FaceMoved {
                face_id: self.face_ids[x as usize].to_string(),
                from: from_id,
                to: to_id,
            }
        };
        events.push(self.emit(cause, event));
    }

    /// Sets or clears a cluster's name (recorded for the store).
    pub(super) fn set_name(&mut self, cluster_id: u64, name: Option<String>) {
        match &name {
            Some(n) => self.rules.names.insert(cluster_id, n.clone()),
            None => self.rules.names.remove(&cluster_id),
        };
        if self.track {
            self.changes.names.push((cluster_id, name));
        }
    }

    /// Recomputes the clusters around `seeds` after their constraints changed: the exact rule
    /// over their kept-graph components, or, over `support_region`, over the faces of their
    /// clusters alone.
    pub(super) fn relink_constrained(
        &mut self,
        seeds: &[u32],
        cause: u32,
        events: &mut Vec<Event>,
    ) {
        if seeds.is_empty() || self.regroup(seeds, cause, events) {
            return;
        }
        self.bounded_regroups += 1;
        let labels = self.labels_of(seeds);
        self.regroup_clusters(&labels, cause, events);
    }

    /// The constrained rule computed at once over every face and the constraints held (names
    /// as tags from the current clusters): one label per face, the smallest member. With the
    /// exact rule (`support_region = 0`) and no names, the stream's clusters equal it (the
    /// property the tests check); names make the rule depend on history.
    pub fn rule_partition(&self) -> Vec<u32> {
        let region: Vec<u32> = (0..self.faces.len() as u32).collect();
        let (edges, rules) = self.rule_inputs(&region);
        rule::partition_with(region.len(), edges, self.params.support, &rules)
    }

    /// Rebuilds the constraints of a restored state.
    pub(super) fn restore_rules(&mut self, r: &mut Restored) {
        if self.params.same_image_cannot_link {
            for (seq, image) in &r.images {
                self.rules.add_photo_face(image, *seq);
            }
        }
        for (id, name) in r.names.drain(..) {
            self.rules.names.insert(id, name);
        }
        r.commands.sort_by_key(|c| c.seq);
        for c in r.commands.drain(..) {
            if !c.undone {
                self.rules.hold(&c);
            }
            self.rules.n_commands = self.rules.n_commands.max(c.seq + 1);
            self.rules.commands.insert(c.command.command_id.clone(), c);
        }
    }
}
