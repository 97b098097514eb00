//! The monitoring files in `dashboards/` against the metrics the daemon really exports: every
//! metric and label the Grafana dashboard and the Prometheus rules use must exist in
//! `telemetry::Metrics`, the queries and rules must parse (`promtool check rules`), and the
//! daemon's own exposition must pass `promtool check metrics`. promtool is required, not optional:
//! a missing one fails the tests with a pointer to `tools/setup.sh`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use clip_cluster::telemetry::Metrics;

const EVENT_TYPES: &[&str] = &[
    "FaceAssigned",
    "ClusterCreated",
    "ClustersMerged",
    "ClusterSplit",
    "FaceMoved",
];
const KAFKA_ERROR_KINDS: &[&str] = &["consume", "produce", "delivery", "dead_letter", "commit"];

/// Labels the daemon puts on its series, plus the histogram bucket label and the two labels
/// Prometheus adds at scrape time.
const ALLOWED_LABELS: &[&str] = &["reason", "type", "kind", "domain", "le", "job", "instance"];

const GRAFANA: &str = "dashboards/grafana/clip-cluster.json";
const ALERTS: &str = "dashboards/prometheus/alerts.yml";
const PROMETHEUS: &str = "dashboards/prometheus/prometheus.yml";

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Metrics with every label value touched: labelled families are only exposed (and only listed
/// by `series_names`) once one of their series exists.
fn full_metrics() -> Metrics {
    let m = Metrics::new();
    // Every reason the daemon can count (decode::Reason::ALL, so a new one cannot be missed).
    for r in clip_cluster::decode::Reason::ALL {
        m.faces_rejected.with_label_values(&[r.class()]).inc();
    }
    for t in EVENT_TYPES {
        m.events_emitted.with_label_values(&[t]).inc();
    }
    for k in KAFKA_ERROR_KINDS {
        m.kafka_errors.with_label_values(&[k]).inc();
    }
    for g in [&m.domain_faces, &m.domain_outbox_depth, &m.domain_blocked] {
        g.with_label_values(&["faces-0"]).set(1);
    }
    m.domain_edge_threshold
        .with_label_values(&["faces-0"])
        .set(0.9);
    m.batch_duration.observe(0.004);
    m.face_to_event.observe(0.012);
    m
}

/// Names of the samples in the exposition: what a PromQL query can actually select (a
/// histogram's base name is not among them, only its `_bucket`, `_sum` and `_count`).
fn exposed_sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect()
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every `clip_cluster_[a-z0-9_]+` identifier in `text` (not counting ones glued to a longer
/// identifier), with the byte offset just after it.
fn metric_refs(text: &str) -> Vec<(String, usize)> {
    const PREFIX: &str = "clip_cluster_";
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find(PREFIX) {
        let start = from + rel;
        let mut end = start + PREFIX.len();
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        let glued_before = start > 0 && (is_ident_char(b[start - 1]) || b[start - 1] == b':');
        let glued_after = end < b.len() && (is_ident_char(b[end]) || b[end] == b':');
        if !glued_before {
            // An upper-case letter or a colon right after is still a reference, and an unknown
            // one; keep it whole so the failure names it.
            let mut full_end = end;
            if glued_after {
                while full_end < b.len() && (is_ident_char(b[full_end]) || b[full_end] == b':') {
                    full_end += 1;
                }
            }
            out.push((text[start..full_end].to_string(), full_end));
        }
        from = end.max(start + 1);
    }
    out
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn read_ident(b: &[u8], i: usize) -> Option<(String, usize)> {
    if i >= b.len() || !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
        return None;
    }
    let mut j = i;
    while j < b.len() && is_ident_char(b[j]) {
        j += 1;
    }
    Some((String::from_utf8_lossy(&b[i..j]).into_owned(), j))
}

/// Label names of the selector `{...}` starting at `i` (which must be `{`), and the offset after
/// it. Values may be quoted with `"`, `'` or backticks and may contain commas and braces.
fn parse_selector(b: &[u8], mut i: usize) -> Result<(Vec<String>, usize), String> {
    let err = |i: usize, what: &str| {
        let end = (i + 40).min(b.len());
        format!(
            "{what} at {:?}",
            String::from_utf8_lossy(&b[i.min(end)..end])
        )
    };
    assert_eq!(b[i], b'{');
    i += 1;
    let mut labels = Vec::new();
    loop {
        i = skip_ws(b, i);
        if i < b.len() && b[i] == b'}' {
            return Ok((labels, i + 1));
        }
        let (name, j) = read_ident(b, i).ok_or_else(|| err(i, "expected a label name"))?;
        labels.push(name);
        i = skip_ws(b, j);
        let op_len = match (b.get(i), b.get(i + 1)) {
            (Some(b'='), Some(b'~')) | (Some(b'!'), Some(b'=')) | (Some(b'!'), Some(b'~')) => 2,
            (Some(b'='), _) => 1,
            _ => return Err(err(i, "expected a matcher operator")),
        };
        i = skip_ws(b, i + op_len);
        let quote = *b.get(i).ok_or_else(|| err(i, "expected a quoted value"))?;
        if !matches!(quote, b'"' | b'\'' | b'`') {
            return Err(err(i, "expected a quoted value"));
        }
        i += 1;
        while i < b.len() && b[i] != quote {
            i += if b[i] == b'\\' && quote != b'`' { 2 } else { 1 };
        }
        if i >= b.len() {
            return Err(err(i, "unterminated label value"));
        }
        i = skip_ws(b, i + 1);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(err(i, "expected ',' or '}'")),
        }
    }
}

/// Label names an expression uses: in the selectors of our metrics and in `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right` clauses.
fn labels_in_expr(expr: &str) -> Result<Vec<String>, String> {
    let b = expr.as_bytes();
    let mut labels = Vec::new();
    for (_, end) in metric_refs(expr) {
        let i = skip_ws(b, end);
        if i < b.len() && b[i] == b'{' {
            let (ls, _) = parse_selector(b, i).map_err(|e| format!("{e} in {expr:?}"))?;
            labels.extend(ls);
        }
    }
    const CLAUSES: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut i = 0;
    while i < b.len() {
        if let Some((word, j)) = read_ident(b, i).filter(|_| i == 0 || !is_ident_char(b[i - 1])) {
            let k = skip_ws(b, j);
            if CLAUSES.contains(&word.as_str()) && k < b.len() && b[k] == b'(' {
                let close = expr[k..]
                    .find(')')
                    .map(|c| k + c)
                    .ok_or_else(|| format!("unclosed {word}(...) in {expr:?}"))?;
                for l in expr[k + 1..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                {
                    labels.push(l.to_string());
                }
                i = close + 1;
            } else {
                i = j;
            }
        } else {
            i += 1;
        }
    }
    Ok(labels)
}

/// Labels named in templates: Grafana's `{{label}}` legends and Prometheus' `$labels.label`.
fn labels_in_template(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(rel) = text[from..].find("{{") {
        let start = skip_ws(b, from + rel + 2);
        if let Some((name, j)) = read_ident(b, start) {
            if text[skip_ws(b, j)..].starts_with("}}") {
                out.push(name);
            }
        }
        from = from + rel + 2;
    }
    from = 0;
    while let Some(rel) = text[from..].find("$labels.") {
        let start = from + rel + "$labels.".len();
        if let Some((name, _)) = read_ident(b, start) {
            out.push(name);
        }
        from = start;
    }
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(GRAFANA)).unwrap_or_else(|e| panic!("{GRAFANA} is not JSON: {e}"))
}

/// Panels, with the ones nested in collapsed rows.
fn all_panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dash["panels"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner.iter());
        }
        out.push(p);
    }
    out
}

/// (panel title, expr, legendFormat) of every query of every panel.
fn dashboard_targets(dash: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("?").to_string(),
                t["expr"].as_str().unwrap_or("").to_string(),
                t["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// The queries of the query variables (`label_values(selector, label)`).
fn dashboard_variable_queries(dash: &serde_json::Value) -> Vec<String> {
    dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| match &v["query"] {
            serde_json::Value::String(s) => s.clone(),
            q => q["query"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

/// Every string in the JSON document (queries, legends, descriptions...).
fn json_strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

/// The `expr:` values of a rules file, inline or block scalars (`|`, `>-`...). Enough YAML for
/// the files we write; a rule this misses would still be checked by promtool.
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let rest = rest.trim();
        if rest.is_empty() || rest.starts_with('|') || rest.starts_with('>') {
            let body: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(body.join(" ").trim().to_string());
        } else {
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    out
}

/// Runs promtool with `args` (and `stdin`), failing the test when it is not installed.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("promtool");
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed (it checks the metrics and alert rules): run tools/setup.sh \
             (Debian package `prometheus`)"
        ),
        Err(e) => panic!("running promtool: {e}"),
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .expect("writing to promtool");
    }
    child.wait_with_output().expect("waiting for promtool")
}

fn assert_promtool_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "promtool {what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboards_use_only_exported_metric_names() {
    let m = full_metrics();
    let known: BTreeSet<String> = m.series_names().into_iter().collect();
    let samples = exposed_sample_names(&m.encode());
    for name in &samples {
        assert!(
            known.contains(name),
            "series_names() misses the exposed {name}"
        );
    }

    let dash = dashboard();
    let mut strings = Vec::new();
    json_strings(&dash, &mut strings);
    let alerts = read(ALERTS);
    let mut exprs: Vec<(String, String)> = dashboard_targets(&dash)
        .into_iter()
        .map(|(title, expr, _)| (format!("{GRAFANA} panel {title:?}"), expr))
        .collect();
    exprs.extend(
        dashboard_variable_queries(&dash)
            .into_iter()
            .map(|q| (format!("{GRAFANA} variable"), q)),
    );
    exprs.extend(
        yaml_exprs(&alerts)
            .into_iter()
            .map(|e| (ALERTS.to_string(), e)),
    );

    let mut unknown = BTreeSet::new();
    // Everywhere (descriptions and annotations included), a name must be one the daemon exports.
    for (file, text) in strings
        .iter()
        .map(|s| (GRAFANA, *s))
        .chain(std::iter::once((ALERTS, alerts.as_str())))
    {
        let refs = metric_refs(text);
        for (name, _) in refs {
            if !known.contains(&name) {
                unknown.insert(format!("{file}: {name}"));
            }
        }
    }
    // In queries, it must be a sample name (a histogram's base name selects nothing).
    let mut used_in = (0, 0);
    for (file, expr) in &exprs {
        for (name, _) in metric_refs(expr) {
            if file.starts_with(GRAFANA) {
                used_in.0 += 1;
            } else {
                used_in.1 += 1;
            }
            if !samples.contains(&name) {
                unknown.insert(format!("{file}: {name} (in {expr:?})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics not exported by the daemon (known: {known:?}):\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(
        used_in.0 > 0,
        "{GRAFANA} queries reference no clip_cluster_ metric"
    );
    assert!(
        used_in.1 > 0,
        "{ALERTS} rules reference no clip_cluster_ metric"
    );
}

#[test]
fn dashboards_use_only_known_labels() {
    let dash = dashboard();
    let mut bad = Vec::new();
    let mut seen = 0;
    let mut check = |place: String, labels: Vec<String>| {
        for l in labels {
            seen += 1;
            if !ALLOWED_LABELS.contains(&l.as_str()) {
                bad.push(format!("{place}: label {l:?}"));
            }
        }
    };
    for (title, expr, legend) in dashboard_targets(&dash) {
        let place = format!("{GRAFANA} panel {title:?}");
        check(
            place.clone(),
            labels_in_expr(&expr).unwrap_or_else(|e| panic!("{place}: {e}")),
        );
        check(place, labels_in_template(&legend));
    }
    for q in dashboard_variable_queries(&dash) {
        let place = format!("{GRAFANA} variable query {q:?}");
        check(
            place.clone(),
            labels_in_expr(&q).unwrap_or_else(|e| panic!("{place}: {e}")),
        );
        // label_values(selector, label): the label it lists.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{place}: expected label_values(selector, label)"));
        let label = inner.rsplit(',').next().unwrap_or("").trim().to_string();
        check(place, vec![label]);
    }
    let alerts = read(ALERTS);
    for expr in yaml_exprs(&alerts) {
        let place = format!("{ALERTS} expr {expr:?}");
        check(
            place.clone(),
            labels_in_expr(&expr).unwrap_or_else(|e| panic!("{place}: {e}")),
        );
    }
    check(format!("{ALERTS} annotations"), labels_in_template(&alerts));
    assert!(
        bad.is_empty(),
        "labels the daemon does not export (allowed: {ALLOWED_LABELS:?}):\n{}",
        bad.join("\n")
    );
    assert!(seen > 0, "no label use found at all: the scanner is broken");
}

#[test]
fn dashboards_label_scanner_sees_selectors_and_clauses() {
    // The label test above is only as good as this scanner; pin what it must find.
    let labels = labels_in_expr(
        r#"sum by (le, pod) (rate(clip_cluster_face_to_event_seconds_bucket{job=~"a,b}", node!="x"}[5m])) / on(instance) group_left (zone) clip_cluster_ready"#,
    )
    .unwrap();
    assert_eq!(labels, ["job", "node", "le", "pod", "instance", "zone"]);
    assert_eq!(
        labels_in_template("{{ $labels.pod }} and {{reason}}"),
        ["reason", "pod"]
    );
    assert!(labels_in_expr("clip_cluster_ready{job=}").is_err());
    assert_eq!(
        metric_refs("x_clip_cluster_a clip_cluster_b_total{} clip_cluster_C")
            .into_iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        ["clip_cluster_b_total", "clip_cluster_C"]
    );
}

#[test]
fn dashboards_grafana_json_is_well_formed() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "clip-cluster");
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion too old"
    );
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "job", "instance"] {
        assert!(
            vars.contains(&v),
            "dashboard variable {v} missing (have {vars:?})"
        );
    }

    let panels = all_panels(&dash);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title:?} data source"
        );
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?} has an empty query"
            );
            // Every query honours the job and instance pickers.
            assert!(
                expr.contains(r#"job=~"$job""#) && expr.contains(r#"instance=~"$instance""#),
                "panel {title:?} query ignores $job or $instance: {expr}"
            );
            queries += 1;
        }
    }
    assert!(queries >= 10, "only {queries} queries in the dashboard");
}

#[test]
fn dashboards_queries_and_alert_rules_pass_promtool() {
    let out = promtool(&["check", "rules", ALERTS], None);
    assert_promtool_ok(&format!("check rules {ALERTS}"), &out);

    // The dashboard's queries, with Grafana's variables filled in, as recording rules: promtool
    // then parses each one as PromQL.
    let dash = dashboard();
    let mut rules = String::from("groups:\n  - name: grafana-queries\n    rules:\n");
    for (n, (_, expr, _)) in dashboard_targets(&dash).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: |\n          {expr}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("grafana-queries.yml");
    std::fs::write(&file, &rules).expect("writing the queries");
    let out = promtool(
        &["check", "rules", file.to_str().expect("utf-8 path")],
        None,
    );
    assert_promtool_ok(
        &format!("check rules on the dashboard's queries:\n{rules}"),
        &out,
    );

    let out = promtool(&["check", "config", PROMETHEUS], None);
    assert_promtool_ok(&format!("check config {PROMETHEUS}"), &out);
}

#[test]
fn dashboards_alert_rules_have_for_severity_and_annotations() {
    let alerts = read(ALERTS);
    let blocks: Vec<&str> = alerts.split("- alert:").skip(1).collect();
    assert!(!blocks.is_empty(), "{ALERTS} has no alert rules");
    let mut names = BTreeSet::new();
    for block in blocks {
        let name = block.lines().next().unwrap_or("").trim();
        assert!(names.insert(name.to_string()), "alert {name} defined twice");
        let has = |key: &str| block.lines().any(|l| l.trim_start().starts_with(key));
        for key in [
            "expr:",
            "for:",
            "labels:",
            "annotations:",
            "summary:",
            "description:",
        ] {
            assert!(has(key), "alert {name} lacks {key}");
        }
        let severity = block
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("severity:"))
            .map(|s| s.trim().trim_matches('"'))
            .unwrap_or_else(|| panic!("alert {name} lacks labels.severity"));
        assert!(
            ["warning", "critical"].contains(&severity),
            "alert {name}: severity {severity:?} is neither warning nor critical"
        );
    }
}

#[test]
fn dashboards_exposition_passes_promtool_check_metrics() {
    let m = full_metrics();
    m.ready.set(1);
    let exposition = m.encode();
    for family in [
        "clip_cluster_faces_rejected_total",
        "clip_cluster_events_emitted_total",
        "clip_cluster_kafka_errors_total",
    ] {
        assert!(
            exposition.contains(&format!("# TYPE {family} counter")),
            "{family} not exposed"
        );
    }
    let out = promtool(&["check", "metrics"], Some(&exposition));
    assert_promtool_ok(
        &format!("check metrics on the exposition:\n{exposition}"),
        &out,
    );
}
