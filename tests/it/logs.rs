//! Log hygiene of a healthy run, as a newcomer sees it: the demo on its synthetic default, stderr
//! to a pipe. No colour codes in a pipe, no hnsw_rs chatter, and no warning except the dead
//! letters the demo sends on purpose.

use std::process::Command;

#[test]
fn a_healthy_demo_logs_plain_text_and_warns_only_about_its_bad_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clip-cluster"))
        .args(["demo", "--synthetic", "1500", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env("TMPDIR", dir.path())
        .output()
        .expect("the binary runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape codes written to a pipe:\n{err}"
    );
    assert!(!err.contains("hnsw_rs"), "hnsw_rs lines in the log:\n{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    // The demo's four deliberately bad messages are dead-lettered with a reason.
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    for w in warnings {
        assert!(
            w.contains("clip_cluster::sink") && w.contains("reason="),
            "{w}"
        );
    }
}
