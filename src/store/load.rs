//! Reading the whole state back at start-up (`Store::load`): every face, its out-list and cluster,
//! the counters, checked as it is read (corrupt state is fatal and loud).

use super::codec::*;
use super::*;

impl Store {
    /// Reads everything the engine needs to resume. Any inconsistency is fatal: corrupt state is
    /// never silently repaired.
    pub fn load(&self) -> Result<Restored, StoreError> {
        let counters = match self.get(b"m:counters")? {
            None => Counters {
                n_faces: 0,
                next_cluster_id: 1,
                next_event_seq: 0,
                next_comp: 0,
            },
            Some(v) => {
                let mut r = Reader { b: &v, at: 0 };
                (|| {
                    Some(Counters {
                        n_faces: r.u32()?,
                        next_cluster_id: r.u64()?,
                        next_event_seq: r.u64()?,
                        next_comp: r.u32()?,
                    })
                })()
                .ok_or_else(|| self.corrupt("m:counters", "truncated"))?
            }
        };
        let n = counters.n_faces as usize;
        let d = self.dim;
        let mut out = Restored {
            face_ids: Vec::with_capacity(n),
            proxies: Vec::with_capacity(n * d),
            identities: Vec::with_capacity(n * d),
            refreshed: Vec::new(),
            variants: Vec::new(),
            weak: Vec::new(),
            faces: Vec::with_capacity(n),
            comps: Vec::new(),
            images: Vec::new(),
            names: Vec::new(),
            commands: Vec::new(),
            erased: Vec::new(),
            counters,
        };
        let iter_err = |e: sled::Error| self.iter_err(e);
        // Erased faces keep their id (a tombstone) and have no vector: zeros stand in.
        let mut erased: Vec<(u32, String)> = Vec::new();
        for kv in self.db.scan_prefix(b"e:") {
            let (k, v) = kv.map_err(iter_err)?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("e:", "short key"))?;
            let id = String::from_utf8(v.to_vec())
                .ok()
                .filter(|_| (seq as usize) < n)
                .ok_or_else(|| self.corrupt(&format!("e:{seq}"), "bad encoding"))?;
            erased.push((seq, id));
        }
        let mut next_erased = erased.iter().peekable();
        let mut fill_erased = |out: &mut Restored, upto: usize| {
            while out.face_ids.len() < upto {
                match next_erased.peek() {
                    Some((s, _)) if *s as usize == out.face_ids.len() => {
                        let (_, id) = next_erased.next().expect("peeked");
                        out.face_ids.push(id.clone());
                        out.proxies.extend(std::iter::repeat_n(0.0, d));
                        out.identities.extend(std::iter::repeat_n(0.0, d));
                    }
                    _ => break,
                }
            }
        };
        for kv in self.db.scan_prefix(b"v:") {
            let (k, v) = kv.map_err(iter_err)?;
            let kname = format!("v:{}", seq_from_key(&k).unwrap_or(u32::MAX));
            fill_erased(&mut out, n);
            let i = out.face_ids.len();
            if seq_from_key(&k) != Some(i as u32) {
                return Err(self.corrupt(&kname, &format!("expected face {i} here")));
            }
            let (id, proxy, identity) =
                decode_face_vectors(&v, d).ok_or_else(|| self.corrupt(&kname, "bad encoding"))?;
            out.face_ids.push(id);
            out.identities
                .extend_from_slice(identity.as_deref().unwrap_or(&proxy));
            out.proxies.extend_from_slice(&proxy);
        }
        fill_erased(&mut out, n);
        out.erased = erased.iter().map(|e| e.0).collect();
        if out.face_ids.len() != n {
            return Err(self.corrupt(
                "v:",
                &format!("{} faces stored, counters say {n}", out.face_ids.len()),
            ));
        }
        for kv in self.db.scan_prefix(b"p:") {
            let (k, v) = kv.map_err(iter_err)?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("p:", "short key"))?;
            let kname = format!("p:{seq}");
            let mut r = Reader { b: &v, at: 0 };
            let proxy = r
                .f32s(d)
                .filter(|_| r.done() && (seq as usize) < n)
                .ok_or_else(|| self.corrupt(&kname, "bad encoding"))?;
            out.refreshed.push((seq, proxy));
        }
        for kv in self.db.scan_prefix(b"w:") {
            let (k, _) = kv.map_err(iter_err)?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("w:", "short key"))?;
            if seq as usize >= n {
                return Err(self.corrupt(&format!("w:{seq}"), "no such face"));
            }
            out.weak.push(seq);
        }
        for kv in self.db.scan_prefix(b"h:") {
            let (k, v) = kv.map_err(iter_err)?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("h:", "short key"))?;
            if v.is_empty() || v.len() % (4 * d) != 0 || seq as usize >= n {
                return Err(self.corrupt(&format!("h:{seq}"), "bad encoding"));
            }
            let vals: Vec<f32> = v
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            out.variants.push((seq, vals));
        }
        // The records in place, then the log's entries in order (`records`): the last wins.
        let mut faces: Vec<Option<FaceRecord>> = vec![None; n];
        for kv in self.db.scan_prefix(b"r:") {
            let (k, v) = kv.map_err(iter_err)?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("r:", "short key"))?;
            let kname = format!("r:{seq}");
            let slot = faces
                .get_mut(seq as usize)
                .ok_or_else(|| self.corrupt(&kname, &format!("beyond the {n} faces stored")))?;
            *slot = Some(
                records::decode_record(&v).ok_or_else(|| self.corrupt(&kname, "bad encoding"))?,
            );
        }
        let mut comps: std::collections::BTreeMap<u32, Option<CompRecord>> = Default::default();
        for kv in self.db.scan_prefix(b"c:") {
            let (k, v) = kv.map_err(iter_err)?;
            let label = seq_from_key(&k).ok_or_else(|| self.corrupt("c:", "short key"))?;
            let c = records::decode_comp(&v)
                .ok_or_else(|| self.corrupt(&format!("c:{label}"), "bad encoding"))?;
            comps.insert(label, Some(c));
        }
        for kv in self.db.scan_prefix(b"l:") {
            let (k, v) = kv.map_err(iter_err)?;
            let kname = format!(
                "l:{}",
                k.get(2..10)
                    .and_then(|b| b.try_into().ok())
                    .map_or(u64::MAX, u64::from_be_bytes)
            );
            let (fs, cs) =
                records::decode_entry(&v).ok_or_else(|| self.corrupt(&kname, "bad encoding"))?;
            for (seq, r) in fs {
                let slot = faces.get_mut(seq as usize).ok_or_else(|| {
                    self.corrupt(&kname, &format!("face {seq} beyond the {n} stored"))
                })?;
                *slot = Some(r);
            }
            for (label, c) in cs {
                comps.insert(label, c);
            }
        }
        for (seq, r) in faces.into_iter().enumerate() {
            let kname = format!("r:{seq}");
            let r = r.ok_or_else(|| {
                self.corrupt(&kname, "no record of this face, in place or in the log")
            })?;
            if r.comp >= counters.next_comp || r.out.iter().any(|&(to, _)| to as usize >= n) {
                return Err(self.corrupt(&kname, "bad encoding"));
            }
            out.faces.push(r);
        }
        for (label, c) in comps {
            if label >= counters.next_comp {
                return Err(self.corrupt(&format!("c:{label}"), "bad encoding"));
            }
            if let Some(c) = c {
                out.comps.push((label, c));
            }
        }
        for kv in self.db.scan_prefix(b"a:") {
            let (k, v) = kv.map_err(iter_err)?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("a:", "short key"))?;
            let meta: crate::engine::FaceMeta = serde_json::from_slice(&v)
                .ok()
                .filter(|_| (seq as usize) < n)
                .ok_or_else(|| self.corrupt(&format!("a:{seq}"), "bad encoding"))?;
            if let Some(image) = meta.image_id {
                out.images.push((seq, image));
            }
        }
        for kv in self.db.scan_prefix(b"n:") {
            let (k, v) = kv.map_err(iter_err)?;
            let id = k
                .get(2..10)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| self.corrupt("n:", "short key"))?;
            let name = String::from_utf8(v.to_vec())
                .map_err(|_| self.corrupt(&format!("n:{id}"), "not UTF-8"))?;
            out.names.push((id, name));
        }
        for kv in self.db.scan_prefix(b"k:") {
            let (k, v) = kv.map_err(iter_err)?;
            let record: crate::engine::feedback::CommandRecord = serde_json::from_slice(&v)
                .map_err(|e| self.corrupt(&String::from_utf8_lossy(&k), &e.to_string()))?;
            let bad = record
                .must
                .iter()
                .chain(&record.cannot)
                .any(|&(a, b)| a as usize >= n || b as usize >= n);
            if bad {
                return Err(self.corrupt(&String::from_utf8_lossy(&k), "a face out of range"));
            }
            out.commands.push(record);
        }
        // Sizes must agree with the faces: a cheap check that catches a torn or foreign write.
        let mut sizes = std::collections::HashMap::<u32, u32>::new();
        for (seq, f) in out.faces.iter().enumerate() {
            if out.erased.binary_search(&(seq as u32)).is_err() {
                *sizes.entry(f.comp).or_default() += 1;
            }
        }
        for (label, c) in &out.comps {
            if sizes.get(label).copied().unwrap_or(0) != c.size {
                return Err(self.corrupt(
                    &format!("c:{label}"),
                    "component size disagrees with its faces",
                ));
            }
        }
        if sizes.len() != out.comps.len() {
            return Err(self.corrupt("c:", "a face points at a missing component"));
        }
        Ok(out)
    }
}

impl Store {
    /// Every live face's indexed proxy (`v:`), in sequence order, handed to `f`: what a
    /// compaction rebuilds the index from.
    pub fn for_each_indexed(&self, mut f: impl FnMut(u32, &[f32])) -> Result<(), StoreError> {
        let d = self.dim;
        for kv in self.db.scan_prefix(b"v:") {
            let (k, v) = kv.map_err(|e| self.iter_err(e))?;
            let seq = seq_from_key(&k).ok_or_else(|| self.corrupt("v:", "short key"))?;
            let (_, proxy, _) = decode_face_vectors(&v, d)
                .ok_or_else(|| self.corrupt(&format!("v:{seq}"), "bad encoding"))?;
            f(seq, &proxy);
        }
        Ok(())
    }
}
