//! Re-clustering (`clip-cluster recluster`): an engine built under a new configuration from an
//! old state's faces takes over the old state's constraints, names and cluster ids. The faces
//! are inserted first (their events are the new state's construction, not news: dropped); then
//! the commands' face pairs are held, the rule is computed once over every face with the old
//! names as tags (so two differently named people never end up in one cluster), and each new
//! cluster takes the id of the old cluster it is heir to. The events that remain tell a
//! subscriber how to get from the old clusters to the new ones.

use std::collections::{BTreeMap, HashMap};

use super::feedback::CommandRecord;
use super::*;

/// What `Engine::regroup_as` did, for the report and the `Reclustered` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Regrouped {
    /// Clusters before (old state) and after.
    pub clusters_before: u64,
    pub clusters_after: u64,
    /// New clusters that kept an old id, and those that got a fresh one.
    pub kept_ids: u64,
    pub new_ids: u64,
    /// Old ids no new cluster kept (their faces moved).
    pub retired_ids: u64,
    /// Faces whose cluster id changed (one `FaceMoved` each).
    pub moved: u64,
    /// Names carried to a cluster.
    pub names: u64,
}

impl<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer> Engine<I, P, S> {
    /// Forgets the events recorded and not yet taken, and gives their sequence numbers back, so
    /// the next event continues without a gap.
    pub fn drop_pending_events(&mut self) {
        if let Some(first) = self.changes.events.first() {
            self.next_event_seq = first.0;
        }
        self.changes.events.clear();
    }

    /// Holds commands carried from another state (their pairs already in this engine's
    /// sequence numbers, in order of application); undone ones are kept for the record only.
    /// The clusters are not re-linked here: `regroup_as` follows.
    pub fn hold_commands(&mut self, records: Vec<CommandRecord>) {
        for r in records {
            if !r.undone {
                self.rules.hold(&r);
            }
            self.rules.n_commands = self.rules.n_commands.max(r.seq + 1);
            if self.track {
                self.changes.commands.push(r.clone());
            }
            self.rules.commands.insert(r.command.command_id.clone(), r);
        }
    }

    /// Recomputes the clusters of every live face at once under this engine's rule, with the
    /// constraints held and `old_cluster[seq]`'s name (from `names`) as each face's tag, and
    /// gives each new cluster an id: the old cluster it is heir to (the new cluster holding
    /// most of an old one's faces, ties to the one holding its oldest) keeps its id; of several
    /// heirs the named one, else the one with most faces, else the oldest id; a cluster heir to
    /// none gets a fresh id from `fresh_from` on. Names follow the ids. Emits `FaceMoved` for
    /// every face whose id changed and `ClusterNamed` for every name on an id that did not carry
    /// it, then `Reclustered`.
    pub fn regroup_as(
        &mut self,
        old_cluster: &[u64],
        names: &HashMap<u64, String>,
        fresh_from: u64,
        from_state: &str,
    ) -> Regrouped {
        let n = self.faces.len();
        assert_eq!(old_cluster.len(), n, "one old cluster per face");
        let region: Vec<u32> = (0..n as u32).filter(|&s| !self.is_erased(s)).collect();
        let (edges, mut rules) = self.rule_inputs(&region);
        let mut tag_of: HashMap<&str, u32> = HashMap::new();
        rules.tags = region
            .iter()
            .map(|&x| {
                names.get(&old_cluster[x as usize]).map(|name| {
                    let next = tag_of.len() as u32;
                    *tag_of.entry(name.as_str()).or_insert(next)
                })
            })
            .collect();
        let part = rule::partition_with(region.len(), edges, self.params.support, &rules);

        // Parts in order of their oldest face.
        let (part_index, parts) = support::parts_of(&region, &part);
        // Old cluster -> (part -> faces there), and the part holding its oldest face (the
        // region is in sequence order, so the first face seen of it).
        let mut spread: BTreeMap<u64, BTreeMap<usize, u32>> = BTreeMap::new();
        let mut oldest_part: BTreeMap<u64, usize> = BTreeMap::new();
        for (li, &x) in region.iter().enumerate() {
            let old = old_cluster[x as usize];
            let p = part_index[&part[li]];
            *spread.entry(old).or_default().entry(p).or_default() += 1;
            oldest_part.entry(old).or_insert(p);
        }
        // part -> [(old id, faces of it there)], the old clusters it is heir to.
        let mut heirs: Vec<Vec<(u64, u32)>> = vec![Vec::new(); parts.len()];
        for (&old, counts) in &spread {
            let most = counts.values().copied().max().unwrap_or(0);
            let tied: Vec<usize> = counts
                .iter()
                .filter(|(_, &c)| c == most)
                .map(|(&p, _)| p)
                .collect();
            let heir = if tied.len() == 1 || !tied.contains(&oldest_part[&old]) {
                tied[0]
            } else {
                oldest_part[&old]
            };
            heirs[heir].push((old, counts[&heir]));
        }
        let mut next_fresh = fresh_from.max(1);
        let mut ids: Vec<u64> = Vec::with_capacity(parts.len());
        let mut report = Regrouped {
            clusters_before: spread.len() as u64,
            clusters_after: parts.len() as u64,
            ..Regrouped::default()
        };
        let mut taken = 0u64;
        for h in &heirs {
            let pick = h.iter().max_by(|a, b| {
                names
                    .contains_key(&a.0)
                    .cmp(&names.contains_key(&b.0))
                    .then(a.1.cmp(&b.1))
                    .then(b.0.cmp(&a.0))
            });
            match pick {
                Some(&(old, _)) => {
                    ids.push(old);
                    report.kept_ids += 1;
                    taken += 1;
                }
                None => {
                    ids.push(next_fresh);
                    next_fresh += 1;
                    report.new_ids += 1;
                }
            }
        }
        report.retired_ids = spread.len() as u64 - taken;

        // The new structure: every old label retired, one label per part.
        for l in 0..self.comps.len() as u32 {
            if self.comps[l as usize].size > 0 {
                self.comps[l as usize].size = 0;
                self.touch_comp(l);
            }
        }
        for (p, faces) in parts.iter().enumerate() {
            let label = self.comps.len() as u32;
            self.comps.push(CompRecord {
                cluster_id: ids[p],
                size: faces.len() as u32,
            });
            self.touch_comp(label);
            for &x in faces {
                self.faces[x as usize].comp = label;
                self.touch_face(x);
            }
        }
        self.live_comps = parts.len();
        // The ids the insertions gave are gone with their labels.
        self.next_cluster_id = next_fresh;

        // Names follow the ids of the old clusters they were on.
        let cause = n as u32;
        let mut events = Vec::new();
        for (p, h) in heirs.iter().enumerate() {
            let Some(name) = h.iter().find_map(|(old, _)| names.get(old)) else {
                continue;
            };
            self.set_name(ids[p], Some(name.clone()));
            report.names += 1;
            if names.get(&ids[p]) != Some(name) {
                events.push(Event::ClusterNamed {
                    cluster_id: ids[p],
                    name: Some(name.clone()),
                    previous: names.get(&ids[p]).cloned(),
                });
            }
        }
        for (p, faces) in parts.iter().enumerate() {
            for &x in faces {
                let from = old_cluster[x as usize];
                if from != ids[p] {
                    report.moved += 1;
                    let face_id = self.face_ids[x as usize].to_string();
                    self.emit(
                        cause,
                        Event::FaceMoved {
                            face_id,
                            from,
                            to: ids[p],
                        },
                    );
                }
            }
        }
        for e in events {
            self.emit(cause, e);
        }
        let summary = Event::Reclustered {
            from_state: from_state.to_string(),
            faces: region.len() as u64,
            clusters_before: report.clusters_before,
            clusters_after: report.clusters_after,
            kept_ids: report.kept_ids,
            new_ids: report.new_ids,
            retired_ids: report.retired_ids,
            moved: report.moved,
        };
        self.emit(cause, summary);
        report
    }

    /// Holds `face_id` as the tombstone of a face an earlier state erased: a sequence number
    /// with no vector, edge or cluster, so the id stays refused. Returns its sequence number,
    /// or `None` when the id is held already.
    pub fn add_tombstone(&mut self, face_id: &str) -> Option<u32> {
        if self.face_ids.get(face_id).is_some() || face_id.is_empty() {
            return None;
        }
        let seq = self.faces.len() as u32;
        let d = self.params.dim;
        // A label of its own, retired at once (as an erased face's is).
        let comp = self.comps.len() as u32;
        self.comps.push(CompRecord {
            cluster_id: PENDING,
            size: 0,
        });
        self.faces.push(Node {
            out: Vec::new(),
            inn: Vec::new(),
            comp,
            weak: false,
        });
        self.mark.push(0);
        self.proxies.extend(std::iter::repeat_n(0.0, d));
        if self.params.refresh > 0 {
            self.identities.extend(std::iter::repeat_n(0.0, d));
            self.extras.push(Vec::new());
        }
        self.face_ids.push(face_id);
        self.erased.insert(seq);
        self.touch_face(seq);
        if self.track {
            self.changes.tombstones.push((seq, face_id.to_string()));
        }
        Some(seq)
    }
}
