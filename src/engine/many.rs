//! An insertion in two halves, and a run of insertions with the halves on two threads.
//!
//! The index half of a face (`prepare`: the identity vector's search, the proxy, the proxy's
//! insertion-and-search, the edge scores) reads and writes only the index side of the engine
//! (index, proxies, proxy generator, scorer); the graph half (`Engine::finish`: out-lists,
//! re-linking, kept flags, the cluster rule, events) reads nothing of it. And face n's index half
//! needs only the index halves of the faces before it. So `insert_many` runs the index halves of
//! a run of faces, in order, on a second thread, while this thread runs their graph halves, in
//! order, as they come: the same calls on the same data in the same order as one face at a time,
//! so the same result, whatever the schedule (tested against `insert_face`). The two halves
//! overlap; each half stays serial, so nothing about the graph or the index changes.

use std::collections::HashMap;
use std::sync::mpsc;

use super::*;

/// Below this many faces to insert, a run is inserted one face at a time (a thread costs more).
const PIPELINE_MIN: usize = 8;

/// The index thread hands over its results this many faces at a time: one wake-up of the
/// graph half per chunk, not per face (a wake-up is a system call on each side).
const CHUNK: usize = 16;

/// Why the engine's index is missing: only `insert_many`'s index thread holds it, during a run.
pub(super) const INDEX_AWAY: &str = "the index is in the engine outside insert_many's index stage";

/// What becomes of a face offered for insertion (`Engine::admit`), unless it is refused.
pub(super) enum Admit {
    /// Inserted, with its normalized identity vector.
    Insert(Vec<f32>),
    /// Its id is that of face `seq`, applied before: nothing changes.
    Repeat(u32),
}

/// What the index half found for one face; the graph half needs nothing else of the index side.
pub(super) struct Prepared {
    pub(super) seq: u32,
    /// The normalized identity vector.
    pub(super) identity: Vec<f32>,
    /// Whether the proxy was generated (else it is the identity vector).
    pub(super) generated: bool,
    pub(super) proxy: Vec<f32>,
    /// The index hits of the proxy among the faces before it.
    pub(super) cands: Vec<Neighbor>,
    /// The hits scoring above `t1`, ranked (`score_edges`).
    pub(super) scored: Vec<Edge>,
}

/// The index half of face `seq`'s insertion: the neighbourhood search and the proxy (when the
/// generator looks at neighbours), the proxy's insertion and its hits, their scores. Appends the
/// proxy to `proxies`. Cannot fail (the face was checked).
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare<I: NeighborIndex, P: ProxyGenerator, S: EdgeScorer>(
    index: &mut I,
    proxies: &mut Vec<f32>,
    proxy_gen: &P,
    scorer: &S,
    p: &EngineParams,
    seq: u32,
    identity: Vec<f32>,
    extra: &[f32],
) -> Prepared {
    // A generator that looks at the neighbourhood sees the identity vector's neighbours; the
    // proxy's insertion then starts from that search's candidates, and its own neighbours come
    // from them (one traversal, `NeighborIndex::search_then_insert`); a replay of the insertion
    // searches again (`clusterer::replay_insert`). Otherwise the proxy is the identity vector
    // and its neighbours come from the insertion's own traversal.
    let (is_generated, proxy, cands) = if proxy_gen.needs_neighbors() {
        let dim = p.dim;
        let stored: &[f32] = proxies;
        let proxy_of = |s: u32| stored[s as usize * dim..(s as usize + 1) * dim].to_vec();
        let mut generated = false;
        let mut derive =
            |around: &[Neighbor]| match proxy_gen.proxy(&identity, extra, around, &proxy_of) {
                Some(v) => {
                    generated = true;
                    v
                }
                None => identity.clone(),
            };
        let (proxy, cands) =
            index.search_then_insert(seq, &identity, p.search_k, &mut derive, p.search_k);
        (generated, proxy, cands)
    } else {
        let cands = index.insert_and_search(seq, &identity, p.search_k);
        (false, identity.clone(), cands)
    };
    let scored = score_edges(proxies, scorer, p, &proxy, cands.iter());
    proxies.extend_from_slice(&proxy);
    Prepared {
        seq,
        identity,
        generated: is_generated,
        proxy,
        cands,
        scored,
    }
}

/// The candidate edges from a face with proxy `from` to the faces `cands` (index hits) scoring
/// above `t1`, ranked.
pub(super) fn score_edges<'a, S: EdgeScorer>(
    proxies: &[f32],
    scorer: &S,
    p: &EngineParams,
    from: &[f32],
    cands: impl Iterator<Item = &'a Neighbor>,
) -> Vec<Edge> {
    let d = p.dim;
    let mut scored: Vec<Edge> = cands
        .map(|n| {
            let other = &proxies[n.seq as usize * d..(n.seq as usize + 1) * d];
            // With refresh, a face's proxy may have moved from the vector it was indexed
            // with: score on the current proxy.
            let cosine = if p.refresh > 0 {
                dot(from, other)
            } else {
                n.similarity
            };
            Edge::new(n.seq, scorer.score(cosine, from, other))
        })
        .filter(|e| e.score > p.t1)
        .collect();
    scored.sort_by(edge_rank);
    scored
}

/// One input face of a run, decided before any is inserted.
enum Plan {
    /// Refused, or a face id applied before: the result is known.
    Done(Result<(Outcome, Vec<Event>), EngineError>),
    /// To insert (its index half is the next one the index thread sends).
    Insert,
}

/// One insertion's result, as `Engine::insert_face` returns it.
pub type InsertResult = Result<(Outcome, Vec<Event>), EngineError>;

impl<I, P, S> Engine<I, P, S>
where
    I: NeighborIndex + Send + 'static,
    P: ProxyGenerator + Clone + Send + 'static,
    S: EdgeScorer + Clone + Send + 'static,
{
    /// Inserts `faces` in order, exactly as `insert_face` one after the other would (the same
    /// results, events and state), with the index halves on a second thread (module docs).
    /// Stops after the face whose insertion makes the engine hold `n` faces with `stop(n)` true,
    /// so that a caller can act at that count (a snapshot, a calibration reading). `between` is
    /// called on this thread after each face with the results so far (the last one is that
    /// face's), while the index thread goes on: the caller may take the changes there (e.g. to
    /// write them), but must not insert or erase. Returns how many of `faces` it consumed and
    /// their results in order.
    pub fn insert_many(
        &mut self,
        faces: &[FaceRef<'_>],
        stop: &dyn Fn(usize) -> bool,
        between: &mut dyn FnMut(&mut Self, &[InsertResult]),
    ) -> (usize, Vec<InsertResult>) {
        // Decide every face's fate first: checks, repeated ids (also within the run), sequence
        // numbers. None of it depends on an insertion's outcome.
        let mut plan = Vec::with_capacity(faces.len());
        let mut jobs: Vec<(usize, u32, Vec<f32>)> = Vec::new();
        let mut in_run: HashMap<&str, u32> = HashMap::new();
        let mut next = self.faces.len();
        let mut consumed = 0;
        for (i, f) in faces.iter().enumerate() {
            consumed = i + 1;
            let identity = match self.admit(*f, next, |id| in_run.get(id).copied()) {
                Ok(Admit::Insert(v)) => v,
                Ok(Admit::Repeat(seq)) => {
                    plan.push(Plan::Done(Ok((Outcome::Duplicate { seq }, Vec::new()))));
                    continue;
                }
                Err(e) => {
                    plan.push(Plan::Done(Err(e)));
                    continue;
                }
            };
            in_run.insert(f.face_id, next as u32);
            jobs.push((i, next as u32, identity));
            plan.push(Plan::Insert);
            next += 1;
            if stop(next) {
                break;
            }
        }

        let mut results = Vec::with_capacity(consumed);
        if jobs.len() < PIPELINE_MIN || self.params.refresh > 0 {
            // Refresh re-links older faces from the index side inside the graph half: serial.
            let mut jobs = jobs.into_iter();
            for (i, entry) in plan.into_iter().enumerate() {
                results.push(match entry {
                    Plan::Done(r) => r,
                    Plan::Insert => {
                        let (_, seq, identity) = jobs.next().expect("one job per insert");
                        Ok(self.insert_checked(faces[i], seq, identity))
                    }
                });
                between(self, &results);
            }
            return (consumed, results);
        }

        let side = Side {
            index: self.index.take().expect(INDEX_AWAY),
            proxies: std::mem::take(&mut self.proxies),
            proxy_gen: self.proxy_gen.clone(),
            scorer: self.scorer.clone(),
        };
        let jobs = jobs
            .into_iter()
            .map(|(i, seq, identity)| Job {
                seq,
                identity,
                variants: faces[i].variants.to_vec(),
            })
            .collect();
        let thread = self.index_thread.get_or_insert_with(IndexThread::spawn);
        if thread
            .runs
            .send(Run {
                side,
                params: self.params,
                jobs,
            })
            .is_err()
        {
            thread.died();
        }
        let mut ready = Vec::new().into_iter();
        for (i, entry) in plan.into_iter().enumerate() {
            match entry {
                Plan::Done(r) => results.push(r),
                Plan::Insert => {
                    let prep = match ready.next() {
                        Some(p) => p,
                        None => match self.index_thread.as_mut().map(|t| t.back.recv()) {
                            Some(Ok(FromIndex::Chunk(chunk))) => {
                                ready = chunk.into_iter();
                                ready.next().expect("chunks are not empty")
                            }
                            _ => self.index_thread.as_mut().expect("spawned above").died(),
                        },
                    };
                    results.push(Ok(self.finish(faces[i], prep)));
                }
            }
            between(self, &results);
        }
        match self.index_thread.as_mut().map(|t| t.back.recv()) {
            Some(Ok(FromIndex::Done(side))) => {
                self.index = Some(side.index);
                self.proxies = side.proxies;
            }
            _ => self.index_thread.as_mut().expect("spawned above").died(),
        }
        (consumed, results)
    }
}

/// What the index thread works with during a run: the engine's index side, moved there and back.
struct Side<I, P, S> {
    index: I,
    proxies: Vec<f32>,
    proxy_gen: P,
    scorer: S,
}

/// One face's index half to run.
struct Job {
    seq: u32,
    identity: Vec<f32>,
    variants: Vec<f32>,
}

/// A run for the index thread.
struct Run<I, P, S> {
    side: Side<I, P, S>,
    params: EngineParams,
    jobs: Vec<Job>,
}

/// What the index thread sends back: the index halves, `CHUNK` at a time, in order; then the
/// index side.
enum FromIndex<I, P, S> {
    Chunk(Vec<Prepared>),
    Done(Side<I, P, S>),
}

/// The thread that runs the index halves of `insert_many`, one per engine for its life (a
/// thread per run would cost a spawn, and the allocator a fresh heap, every batch). It ends
/// when the engine is dropped (its channels close).
pub(super) struct IndexThread<I, P, S> {
    runs: mpsc::Sender<Run<I, P, S>>,
    back: mpsc::Receiver<FromIndex<I, P, S>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl<I, P, S> IndexThread<I, P, S>
where
    I: NeighborIndex + Send + 'static,
    P: ProxyGenerator + Send + 'static,
    S: EdgeScorer + Send + 'static,
{
    fn spawn() -> Self {
        let (runs, inbox) = mpsc::channel::<Run<I, P, S>>();
        let (outbox, back) = mpsc::sync_channel::<FromIndex<I, P, S>>(64);
        let handle = std::thread::Builder::new()
            .name("index-halves".into())
            .spawn(move || {
                for Run {
                    mut side,
                    params,
                    jobs,
                } in inbox
                {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    for job in jobs {
                        chunk.push(prepare(
                            &mut side.index,
                            &mut side.proxies,
                            &side.proxy_gen,
                            &side.scorer,
                            &params,
                            job.seq,
                            job.identity,
                            &job.variants,
                        ));
                        if chunk.len() == CHUNK
                            && outbox
                                .send(FromIndex::Chunk(std::mem::take(&mut chunk)))
                                .is_err()
                        {
                            return;
                        }
                    }
                    if !chunk.is_empty() && outbox.send(FromIndex::Chunk(chunk)).is_err() {
                        return;
                    }
                    if outbox.send(FromIndex::Done(side)).is_err() {
                        return;
                    }
                }
            })
            .expect("cannot start the engine's index thread");
        IndexThread {
            runs,
            back,
            handle: Some(handle),
        }
    }
}

impl<I, P, S> IndexThread<I, P, S> {
    /// The thread stopped mid-run: only a panic there does that; it goes on here.
    fn died(&mut self) -> ! {
        match self.handle.take().map(|h| h.join()) {
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            _ => panic!("the engine's index thread stopped before the end of a run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::edge::EdgeModel;
    use crate::index::{HnswIndex, HnswParams};
    use crate::proxy::{NeighborProxy, ProxyModel};

    const DIM: usize = 16;

    /// 420 faces of 25 people (noisy copies of a unit centre), with every kind of face a run
    /// meets: weak ones, two faces of one photo, a repeated id (of an earlier run and of the
    /// same run), a wrong dimension, a NaN.
    fn stream() -> Vec<Face> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let gauss = |rng: &mut rand_chacha::ChaCha8Rng| -> f32 {
            let (u, v): (f32, f32) = (rng.gen_range(1e-6..1.0), rng.gen_range(0.0..1.0));
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        let centres: Vec<Vec<f32>> = (0..25)
            .map(|_| (0..DIM).map(|_| gauss(&mut rng)).collect())
            .collect();
        let mut faces: Vec<Face> = (0..420)
            .map(|i| {
                let c = &centres[rng.gen_range(0..centres.len())];
                let norm = c.iter().map(|x| x * x).sum::<f32>().sqrt();
                let v = c
                    .iter()
                    .map(|x| x / norm + 0.15 * gauss(&mut rng))
                    .collect();
                let mut f = Face::new(format!("f{i}"), v);
                f.meta.quality = Some(if i % 13 == 0 { 0.1 } else { 0.9 });
                if i % 50 == 7 {
                    f.meta.image_id = Some(format!("photo{}", i / 100));
                }
                f
            })
            .collect();
        faces[37].vector.truncate(DIM - 1);
        faces[150].vector[3] = f32::NAN;
        faces[90].face_id = "f10".into();
        faces[205].face_id = "f201".into();
        faces
    }

    fn engine() -> Engine<HnswIndex, ProxyModel, EdgeModel> {
        let params = EngineParams {
            dim: DIM,
            k: 4,
            search_k: 12,
            t1: 0.5,
            t2: 0.3,
            refresh: 0,
            refresh_min_change: 0.0,
            min_quality: 0.3,
            weak_margin: 0.85,
            support: 0.3,
            support_region: 32,
            same_image_cannot_link: true,
        };
        let index = HnswIndex::new(HnswParams {
            m: 8,
            ef_construction: 24,
            ef_search: 24,
            capacity_hint: 1000,
        });
        let proxy = ProxyModel::Neighbor(NeighborProxy {
            directions: None,
            strength: 1.0,
            temperature: 0.05,
            context_k: 5,
            min_neighbors: 3,
            with_context: true,
            attention: None,
        });
        Engine::with_stages(params, index, proxy, EdgeModel::Cosine)
    }

    #[test]
    fn a_run_in_two_halves_equals_one_face_at_a_time() {
        let faces = stream();
        let mut one = engine();
        let one_results: Vec<InsertResult> =
            faces.iter().map(|f| one.insert_face(f.view())).collect();

        let mut run = engine();
        let views: Vec<FaceRef> = faces.iter().map(|f| f.view()).collect();
        let (mut run_results, mut at, mut runs) = (Vec::new(), 0, 0);
        let mut stopped_at = Vec::new();
        while at < views.len() {
            let mut seen = 0;
            let (consumed, r) =
                run.insert_many(&views[at..], &|n| n % 97 == 0, &mut |_, so_far| {
                    assert_eq!(so_far.len(), seen + 1, "called once after each face");
                    seen += 1;
                });
            assert_eq!(seen, consumed);
            run_results.extend(r);
            at += consumed;
            runs += 1;
            stopped_at.push(run.n_faces());
        }
        // Each run ended where the stop said (a caller acts there), the last at the end.
        assert_eq!(stopped_at, vec![97, 194, 291, 388, 416]);
        assert_eq!(runs, 5);

        assert_eq!(format!("{one_results:?}"), format!("{run_results:?}"));
        assert!(one_results.iter().filter(|r| r.is_err()).count() == 2);
        assert!(one_results
            .iter()
            .any(|r| matches!(r, Ok((Outcome::Duplicate { seq: 10 }, _)))));
        assert_eq!(one.n_faces(), 416);
        // The whole state: records, components, events, counters.
        assert_eq!(
            format!("{:?}", one.take_changes()),
            format!("{:?}", run.take_changes())
        );
        for s in 0..one.n_faces() as u32 {
            assert_eq!(one.cluster_of(s), run.cluster_of(s));
            assert_eq!(one.proxy(s), run.proxy(s));
        }
        assert!(one.n_clusters() > 10, "the stream is not one blob");
        // The index came back: both go on alike.
        let extra = Face::new("late", faces[3].vector.clone());
        assert_eq!(
            format!("{:?}", one.insert_face(extra.view())),
            format!("{:?}", run.insert_face(extra.view()))
        );
    }
}
