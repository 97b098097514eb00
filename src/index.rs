//! The nearest-neighbour index over proxies: the `NeighborIndex` seam the engine searches, an exact
//! brute-force implementation (tests, small sets, the reference for "stream equals batch"), and the
//! HNSW implementation on hnsw_rs with its on-disk snapshot.
//!
//! Similarities are cosine similarities of L2-normalized vectors (dot products). Results are ordered by
//! similarity descending, ties by the smaller face sequence number, so every caller sees one order.

use std::path::{Path, PathBuf};

use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::PointId;
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{DistDot, Hnsw};

/// One search hit: the face's sequence number and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    pub seq: u32,
    pub similarity: f32,
}

/// Total order used everywhere a neighbour list is ranked: higher similarity first, then older face.
pub fn rank(a: &Neighbor, b: &Neighbor) -> std::cmp::Ordering {
    b.similarity
        .total_cmp(&a.similarity)
        .then_with(|| a.seq.cmp(&b.seq))
}

/// What the engine needs from an index. Insertions arrive in sequence order (0, 1, 2, ...).
pub trait NeighborIndex {
    /// Adds the proxy of face `seq`; `v` is L2-normalized.
    fn insert(&mut self, seq: u32, v: &[f32]);
    /// Up to `k` most similar indexed faces, in `rank` order.
    fn search(&self, v: &[f32], k: usize) -> Vec<Neighbor>;
    /// Adds face `seq` and returns the up-to-`k` most similar faces indexed before it, in `rank`
    /// order: `search` then `insert`, which an index may do in one traversal.
    fn insert_and_search(&mut self, seq: u32, v: &[f32], k: usize) -> Vec<Neighbor> {
        let hits = self.search(v, k);
        self.insert(seq, v);
        hits
    }
    /// A search and the insertion that follows from it: the up-to-`k_query` hits of `query` (as
    /// `search`), then face `seq` inserted with the vector `derive` makes of them, and that
    /// vector's up-to-`k` hits among the faces before it (as `insert_and_search`). Returns the
    /// vector and its hits. An index may insert from the query's candidates instead of a traversal
    /// of its own (HNSW does, see there); the structure is then a function of `query` as well, so
    /// a replay of the insertion must call this with the same query.
    fn search_then_insert(
        &mut self,
        seq: u32,
        query: &[f32],
        k_query: usize,
        derive: &mut dyn FnMut(&[Neighbor]) -> Vec<f32>,
        k: usize,
    ) -> (Vec<f32>, Vec<Neighbor>) {
        let around = self.search(query, k_query);
        let v = derive(&around);
        let hits = self.insert_and_search(seq, &v, k);
        (v, hits)
    }
    /// Erases face `seq` from every later result (a tombstone: the point stays in the structure
    /// until the index is rebuilt without it, `Clusterer::compact`). Idempotent.
    fn remove(&mut self, seq: u32);
    /// Tombstoned points still held.
    fn n_removed(&self) -> usize;
    /// Number of points held, tombstones included.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exact search by scanning every vector. O(n) per query: for tests and small data sets.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    dim: usize,
    data: Vec<f32>,
    /// The face of each row (increasing; rows of faces erased before a rebuild are absent).
    seqs: Vec<u32>,
    removed: Tombstones,
}

impl ExactIndex {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            data: Vec::new(),
            seqs: Vec::new(),
            removed: Tombstones::default(),
        }
    }
}

/// A set of erased sequence numbers, one bit each.
#[derive(Debug, Clone, Default)]
pub struct Tombstones {
    bits: Vec<u64>,
    n: usize,
}

impl Tombstones {
    pub fn contains(&self, seq: u32) -> bool {
        let (w, b) = (seq as usize / 64, seq % 64);
        self.bits.get(w).is_some_and(|x| x >> b & 1 == 1)
    }
    /// Adds `seq`; false when it was there.
    pub fn insert(&mut self, seq: u32) -> bool {
        let (w, b) = (seq as usize / 64, seq % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        let was = self.bits[w] >> b & 1 == 1;
        self.bits[w] |= 1 << b;
        self.n += usize::from(!was);
        !was
    }
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorize without reassociating one long chain.
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for c in 0..chunks {
        for l in 0..4 {
            acc[l] += a[c * 4 + l] * b[c * 4 + l];
        }
    }
    let mut sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

impl NeighborIndex for ExactIndex {
    fn insert(&mut self, seq: u32, v: &[f32]) {
        debug_assert!(
            self.seqs.last().is_none_or(|&l| l < seq),
            "inserts arrive in sequence order"
        );
        self.data.extend_from_slice(v);
        self.seqs.push(seq);
    }

    fn search(&self, v: &[f32], k: usize) -> Vec<Neighbor> {
        let mut hits: Vec<Neighbor> = self
            .data
            .chunks_exact(self.dim)
            .zip(&self.seqs)
            .filter(|(_, &seq)| !self.removed.contains(seq))
            .map(|(row, &seq)| Neighbor {
                seq,
                similarity: dot(v, row),
            })
            .collect();
        let k = k.min(hits.len());
        if k == 0 {
            return Vec::new();
        }
        hits.select_nth_unstable_by(k - 1, rank);
        hits.truncate(k);
        hits.sort_by(rank);
        hits
    }

    fn remove(&mut self, seq: u32) {
        self.removed.insert(seq);
    }

    fn n_removed(&self) -> usize {
        self.removed.len()
    }

    fn len(&self) -> usize {
        self.seqs.len()
    }
}

/// HNSW construction and search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HnswParams {
    /// Links per node per layer (hnsw_rs `max_nb_connection`).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching; raised to `k` when a search asks for more.
    pub ef_search: usize,
    /// Expected number of points, a sizing hint only.
    pub capacity_hint: usize,
}

/// Errors of the index persistence.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot write the HNSW snapshot into {dir}: {reason}")]
    Dump { dir: PathBuf, reason: String },
    #[error("the HNSW snapshot {basename} in {dir} cannot be loaded: {reason}")]
    Load {
        dir: PathBuf,
        basename: String,
        reason: String,
    },
}

/// HNSW index on hnsw_rs (vendored with the patches `vendor/hnsw_rs/PATCHES.md` lists) with `DistDot` (vectors are normalized; the `simdeez_f` feature makes the
/// dot product tolerate a self-similarity a hair above 1, which a re-sent face produces).
///
/// Each point's layer is a hash of its sequence number (patched hnsw_rs), so a structure that is
/// dumped, reloaded and continued is the structure an uninterrupted run builds: restarts change
/// nothing.
pub struct HnswIndex {
    hnsw: Hnsw<'static, f32, DistDot>,
    params: HnswParams,
    n: usize,
    /// Erased faces: filtered out of every result, not dumped (the store knows them).
    removed: Tombstones,
}

impl HnswIndex {
    pub fn new(params: HnswParams) -> Self {
        let hnsw = Hnsw::new(
            params.m,
            params.capacity_hint.max(1024),
            16,
            params.ef_construction,
            DistDot,
        );
        Self {
            hnsw,
            params,
            n: 0,
            removed: Tombstones::default(),
        }
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Writes `<name>.hnsw.graph` and `<name>.hnsw.data` into `dir` and returns `<name>`:
    /// `basename`, or a variant of it that hnsw_rs picks when it will not overwrite a file (it
    /// refuses for a structure it loaded). Stale files under `basename` are removed first.
    pub fn dump(&self, dir: &Path, basename: &str) -> Result<String, IndexError> {
        let err = |reason: String| IndexError::Dump {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        for ext in ["hnsw.graph", "hnsw.data"] {
            let p = dir.join(format!("{basename}.{ext}"));
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| err(e.to_string()))?;
            }
        }
        self.hnsw
            .file_dump(dir, basename)
            .map_err(|e| err(e.to_string()))
    }

    /// Loads a snapshot written by `dump`. `expected_points` guards against a snapshot that is
    /// readable but does not cover what the caller believes it covers.
    pub fn load(
        dir: &Path,
        basename: &str,
        params: HnswParams,
        expected_points: usize,
    ) -> Result<Self, IndexError> {
        let err = |reason: String| IndexError::Load {
            dir: dir.to_path_buf(),
            basename: basename.to_string(),
            reason,
        };
        for ext in ["hnsw.graph", "hnsw.data"] {
            let p = dir.join(format!("{basename}.{ext}"));
            if !p.is_file() {
                return Err(err(format!("{} is missing", p.display())));
            }
        }
        // The loaded structure borrows its loader for life; one small loader per load is leaked on
        // purpose (loads happen at start-up and at snapshot boundaries, not per face).
        // hnsw_rs panics on some malformed files instead of returning an error: a damaged snapshot
        // must be rebuilt, not crash the daemon.
        let loaded = std::panic::catch_unwind(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, basename)));
            io.load_hnsw::<f32, DistDot>()
        });
        let hnsw = match loaded {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(err(e.to_string())),
            Err(_) => return Err(err("hnsw_rs panicked while reading it".to_string())),
        };
        let n = hnsw.get_nb_point();
        if n != expected_points {
            return Err(err(format!(
                "it holds {n} points, the state says {expected_points}"
            )));
        }
        let mut hnsw = hnsw;
        hnsw.set_searching_mode(false);
        Ok(Self {
            hnsw,
            params,
            n,
            removed: Tombstones::default(),
        })
    }

    /// hnsw_rs's results as the `k` first live faces in `rank` order.
    fn live_hits(&self, found: &[hnsw_rs::hnsw::Neighbour], k: usize) -> Vec<Neighbor> {
        let mut hits: Vec<Neighbor> = found
            .iter()
            .filter(|n| !self.removed.contains(n.d_id as u32))
            .map(|n| Neighbor {
                seq: n.d_id as u32,
                similarity: 1.0 - n.distance,
            })
            .collect();
        hits.sort_by(rank);
        hits.truncate(k);
        hits
    }
}

impl NeighborIndex for HnswIndex {
    fn insert(&mut self, seq: u32, v: &[f32]) {
        self.hnsw.insert_slice((v, seq as usize));
        self.n += 1;
    }

    fn insert_and_search(&mut self, seq: u32, v: &[f32], k: usize) -> Vec<Neighbor> {
        // One traversal: the insertion's own candidate search (ef_construction), see
        // vendor/hnsw_rs/PATCHES.md. Tombstones are dropped from its candidates, so it asks for
        // as many more as there can be among them.
        let extra = self.removed.len().min(self.params.ef_construction);
        let found = self
            .hnsw
            .insert_slice_and_search((v, seq as usize), k + extra);
        self.n += 1;
        self.live_hits(&found, k)
    }

    /// One traversal: the query's search keeps its whole candidate list (`ef_search`, at least
    /// `k_query`, tombstones included, so that the list is a function of the structure alone),
    /// the query's hits are its first `k_query` live faces, and a new point of layer 0 takes the
    /// list as its layer-0 candidates (patch 0012) instead of a search of its own: the derived
    /// vector is near the query (the neighbour proxy: BENCHMARKS.md, section 18). Its hits are
    /// the candidates ranked by the derived vector.
    fn search_then_insert(
        &mut self,
        seq: u32,
        query: &[f32],
        k_query: usize,
        derive: &mut dyn FnMut(&[Neighbor]) -> Vec<f32>,
        k: usize,
    ) -> (Vec<f32>, Vec<Neighbor>) {
        let pool = if self.n == 0 {
            Vec::new()
        } else {
            let ef = self.params.ef_search.max(k_query);
            self.hnsw.search(query, ef, ef)
        };
        let v = derive(&self.live_hits(&pool, k_query));
        let seeds: Vec<PointId> = pool.iter().map(|n| n.p_id).collect();
        let extra = self.removed.len().min(seeds.len());
        let found = self
            .hnsw
            .insert_slice_seeded((&v, seq as usize), &seeds, k + extra);
        self.n += 1;
        (v, self.live_hits(&found, k))
    }

    fn search(&self, v: &[f32], k: usize) -> Vec<Neighbor> {
        if self.n == 0 || k == 0 {
            return Vec::new();
        }
        let ef = self.params.ef_search.max(k);
        let found = if self.removed.is_empty() {
            self.hnsw.search(v, k, ef)
        } else {
            // The traversal walks through tombstones; only the results skip them.
            let keep = |id: &usize| !self.removed.contains(*id as u32);
            self.hnsw.search_filter(v, k, ef, Some(&keep))
        };
        self.live_hits(&found, k)
    }

    fn remove(&mut self, seq: u32) {
        self.removed.insert(seq);
    }

    fn n_removed(&self) -> usize {
        self.removed.len()
    }

    fn len(&self) -> usize {
        self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.gen::<f32>() - 0.5).collect();
        let n = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    /// Small HNSW settings (M 8, ef_construction 32, `ef_search`) and `n` random unit vectors
    /// of dimension 16 drawn from `seed`.
    fn fixture(seed: u64, n: usize, ef_search: usize) -> (HnswParams, Vec<Vec<f32>>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let params = HnswParams {
            m: 8,
            ef_construction: 32,
            ef_search,
            capacity_hint: 1000,
        };
        (params, (0..n).map(|_| unit(&mut rng, 16)).collect())
    }

    #[test]
    fn exact_index_ranks_by_similarity_then_seq() {
        let mut idx = ExactIndex::new(2);
        idx.insert(0, &[1.0, 0.0]);
        idx.insert(1, &[0.0, 1.0]);
        idx.insert(2, &[1.0, 0.0]);
        let hits = idx.search(&[1.0, 0.0], 2);
        assert_eq!(hits.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn hnsw_snapshot_round_trips_and_continues_like_an_uninterrupted_index() {
        let (params, vs) = fixture(7, 600, 32);
        let dim = vs[0].len();
        let dir = tempfile::tempdir().unwrap();

        // Uninterrupted, dumping at 300 on the way.
        let mut a = HnswIndex::new(params);
        let mut a_found = Vec::new();
        for (i, v) in vs.iter().enumerate() {
            a_found.push(a.insert_and_search(i as u32, v, 5));
            if i + 1 == 300 {
                a.dump(dir.path(), "a").unwrap();
            }
        }
        // A second process: load the dump and continue.
        let mut b = HnswIndex::load(dir.path(), "a", params, 300).unwrap();
        for (i, v) in vs[300..].iter().enumerate() {
            assert_eq!(b.insert_and_search(300 + i as u32, v, 5), a_found[300 + i]);
        }
        for q in vs.iter().take(50) {
            assert_eq!(a.search(q, 10), b.search(q, 10));
        }
        // The insertion's neighbours are true similarities, nearest first.
        let exact = {
            let mut e = ExactIndex::new(dim);
            for (i, v) in vs[..599].iter().enumerate() {
                e.insert(i as u32, v);
            }
            e.search(&vs[599], 5)
        };
        assert_eq!(a_found[599][0].seq, exact[0].seq);
        assert!((a_found[599][0].similarity - exact[0].similarity).abs() < 1e-5);
        assert!(HnswIndex::load(dir.path(), "a", params, 299).is_err());
        assert!(HnswIndex::load(dir.path(), "missing", params, 300).is_err());
    }

    /// A vector derived from a query and its hits, as the neighbour proxy is: near the query.
    fn derived(q: &[f32], around: &[Neighbor], vs: &[Vec<f32>]) -> Vec<f32> {
        let mut v = q.to_vec();
        if let Some(n) = around.first() {
            v.iter_mut()
                .zip(&vs[n.seq as usize])
                .for_each(|(x, y)| *x += 0.3 * y);
        }
        let norm = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    #[test]
    fn an_insertion_seeded_by_its_search_replays_exactly_after_a_restart() {
        let (params, queries) = fixture(11, 700, 24);
        let dir = tempfile::tempdir().unwrap();
        // Uninterrupted: each face searched by its query, inserted with the derived vector.
        let mut a = HnswIndex::new(params);
        let mut indexed: Vec<Vec<f32>> = Vec::new();
        let mut a_hits = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            let plain = a.search(q, 8);
            let mut seen = Vec::new();
            let (v, hits) = a.search_then_insert(
                i as u32,
                q,
                8,
                &mut |around| {
                    seen = around.to_vec();
                    derived(q, around, &indexed)
                },
                5,
            );
            // The derivation saw what a plain search returns; the hits are the derived
            // vector's true similarities, nearest first, among the faces before it.
            assert_eq!(seen, plain);
            assert!(hits.len() == 5.min(i));
            for h in &hits {
                assert!(h.seq < i as u32);
                assert!((h.similarity - dot(&v, &indexed[h.seq as usize])).abs() < 1e-5);
            }
            assert!(hits.windows(2).all(|w| rank(&w[0], &w[1]).is_lt()));
            indexed.push(v);
            a_hits.push(hits);
            if i + 1 == 300 {
                a.dump(dir.path(), "a").unwrap();
            }
        }
        // A second process: the dump, faces 300..500 replayed from their stored vectors and
        // queries, then 500.. live: every result as the uninterrupted index gave it.
        let mut b = HnswIndex::load(dir.path(), "a", params, 300).unwrap();
        for i in 300..500 {
            let v = indexed[i].clone();
            b.search_then_insert(i as u32, &queries[i], 8, &mut |_| v.clone(), 0);
        }
        for i in 500..700 {
            let (v, hits) = b.search_then_insert(
                i as u32,
                &queries[i],
                8,
                &mut |around| derived(&queries[i], around, &indexed),
                5,
            );
            assert_eq!(v, indexed[i]);
            assert_eq!(hits, a_hits[i]);
        }
        for q in queries.iter().take(50) {
            assert_eq!(a.search(q, 10), b.search(q, 10));
        }
        // A replay with the indexed vector as its query (a plain insertion's replay) would not
        // be the same structure: the test can fail.
        let mut c = HnswIndex::load(dir.path(), "a", params, 300).unwrap();
        for (i, v) in indexed.iter().enumerate().skip(300) {
            c.insert(i as u32, v);
        }
        assert!(
            (0..200).any(|j| a.search(&queries[j], 10) != c.search(&queries[j], 10)),
            "a plain replay gives the same structure"
        );
    }

    /// The layer sizes of an index (patch 0013's test: a loaded index draws levels as the
    /// dumped one did).
    fn layer_sizes(i: &HnswIndex) -> Vec<usize> {
        let ix = i.hnsw.get_point_indexation();
        (0..8).map(|l| ix.get_layer_nb_point(l)).collect()
    }

    #[test]
    fn a_loaded_index_draws_the_layers_the_dumped_one_draws() {
        // Before hnsw_rs patch 0013 a loaded structure drew its new points' layers with the
        // scale squared: here, after the 400 new points, 38 points above layer 0 against the
        // uninterrupted index's 88 (layer sizes 662/33/5/0 against 612/75/12/1), and the
        // insertions' results parted at face 624, the first new point of layer 3.
        let (params, vs) = fixture(11, 700, 24);
        let dir = tempfile::tempdir().unwrap();
        let mut a = HnswIndex::new(params);
        for (i, v) in vs[..300].iter().enumerate() {
            a.insert(i as u32, v);
        }
        a.dump(dir.path(), "a").unwrap();
        let mut b = HnswIndex::load(dir.path(), "a", params, 300).unwrap();
        for (i, v) in vs.iter().enumerate().skip(300) {
            let i = i as u32;
            assert_eq!(
                a.insert_and_search(i, v, 5),
                b.insert_and_search(i, v, 5),
                "face {i}"
            );
        }
        assert_eq!(layer_sizes(&a), layer_sizes(&b));
        assert!(
            layer_sizes(&a)[3] > 0,
            "the test reaches a layer the dump did not have"
        );
    }
}
