//! Clustering domains: a domain (tenant, camera group) is a unit of state: one state directory,
//! one total order of faces, one clustering, one key on the events topic. In single mode a
//! process holds one domain fed by every partition it consumes; in per-partition mode every
//! input partition is its own domain, opened when the partition is assigned and closed when it
//! is revoked (`pipeline` does the IO; the rules live here, pure).
//!
//! The guard: a partition that arrives without its state. When the domain's directory is
//! missing or empty but the group has committed an offset above 0 for the partition, someone
//! processed it with a state this process cannot see (another volume, or lost). Starting fresh
//! would silently cluster only the faces after that offset, under the same domain name; the
//! partition is paused and reported instead, unless `daemon.allow_fresh_domains` says otherwise.

use std::path::Path;

/// Whether a domain's state directory holds anything (a missing or empty directory does not).
pub fn has_state(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Per-partition mode keeps one directory per domain under `store.path`; a `store.path` that is
/// itself a (single-domain) state directory would mix the two layouts.
pub fn check_root(root: &Path) -> Result<(), String> {
    if crate::store::is_state_dir(root) {
        return Err(format!(
            "store.path {} holds a single-domain state (daemon.domains = \"single\"), but \
             daemon.domains = \"per_partition\" keeps one directory per domain under store.path: \
             give it another directory, or move this state to {}/<topic>-<partition>/ to make it \
             the state of that partition's domain",
            root.display(),
            root.display()
        ));
    }
    Ok(())
}

/// What to do with a partition whose domain has no state here, given the group's committed
/// offset for it (None: nothing committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fresh {
    /// Nothing was processed before: a new domain.
    Start,
    /// Processed before, but the operator allows starting over at the committed offset.
    StartAnyway { committed: i64 },
    /// Processed before: block the partition.
    Block { committed: i64 },
}

pub fn fresh_decision(committed: Option<i64>, allow_fresh: bool) -> Fresh {
    match committed {
        Some(c) if c > 0 && allow_fresh => Fresh::StartAnyway { committed: c },
        Some(c) if c > 0 => Fresh::Block { committed: c },
        _ => Fresh::Start,
    }
}

/// Why an assigned partition's domain cannot be served here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The group committed offsets for the partition, but the domain has no state here.
    MissingState { committed: i64 },
    /// The group's committed offset could not be read, so a fresh start cannot be ruled safe.
    CommittedUnknown(String),
    /// Another handle holds the state directory (the partition's previous owner has not let go
    /// yet).
    Locked,
    /// The state exists but cannot be opened (damaged, another model or graph configuration).
    Unreadable(String),
}

impl Blocked {
    /// Whether trying again later can help (the partition stays paused meanwhile).
    pub fn retriable(&self) -> bool {
        matches!(self, Blocked::CommittedUnknown(_) | Blocked::Locked)
    }

    /// A sentence for the log and /readyz: what is wrong, what happens meanwhile, and the fix.
    pub fn describe(&self, topic: &str, partition: i32, domain: &str, dir: &Path) -> String {
        let at = format!("partition {partition} of {topic} (domain {domain})");
        match self {
            Blocked::MissingState { committed } => format!(
                "{at} has committed offset {committed} in the consumer group, but its state \
                 directory {} is missing or empty: it was processed by a process whose \
                 store.path this one does not see. The partition is paused; the others go on. \
                 Fix: give every cluster process the same shared store.path, or use static \
                 membership (kafka.group_instance_id) with a persistent store.path per process \
                 so partitions return to the volume holding their state; or reset the group's \
                 offset for this partition to the earliest to rebuild the domain from the topic; \
                 or set daemon.allow_fresh_domains = true to start a fresh domain at offset \
                 {committed} (the faces before it are not in it)",
                dir.display()
            ),
            Blocked::CommittedUnknown(e) => format!(
                "{at} has no state in {} and the group's committed offset for it cannot be \
                 read ({e}); the partition stays paused and the check is retried",
                dir.display()
            ),
            Blocked::Locked => format!(
                "{at}: state directory {} is held by another process (the partition's previous \
                 owner has not closed it yet?); the partition stays paused and opening is \
                 retried",
                dir.display()
            ),
            Blocked::Unreadable(e) => format!(
                "{at}: state cannot be opened: {e}. The partition is paused; the others go on"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_start_only_when_nothing_was_committed_or_allowed() {
        assert_eq!(fresh_decision(None, false), Fresh::Start);
        assert_eq!(fresh_decision(Some(0), false), Fresh::Start);
        assert_eq!(
            fresh_decision(Some(120), false),
            Fresh::Block { committed: 120 }
        );
        assert_eq!(
            fresh_decision(Some(120), true),
            Fresh::StartAnyway { committed: 120 }
        );
    }

    #[test]
    fn state_presence_and_root_layout() {
        let d = tempfile::tempdir().unwrap();
        let dom = d.path().join("faces-0");
        assert!(!has_state(&dom), "missing");
        std::fs::create_dir(&dom).unwrap();
        assert!(!has_state(&dom), "empty");
        std::fs::write(dom.join("db"), b"x").unwrap();
        assert!(has_state(&dom));
        assert!(check_root(d.path()).is_ok());
        let e = check_root(&dom).unwrap_err();
        assert!(
            e.contains("single-domain") && e.contains("per_partition"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_state_names_the_partition_and_the_fixes() {
        let b = Blocked::MissingState { committed: 42 };
        assert!(!b.retriable());
        assert!(Blocked::Locked.retriable());
        let s = b.describe("faces", 2, "faces-2", Path::new("/s/faces-2"));
        for want in [
            "partition 2 of faces",
            "faces-2",
            "42",
            "/s/faces-2",
            "store.path",
            "kafka.group_instance_id",
            "daemon.allow_fresh_domains",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
    }
}
