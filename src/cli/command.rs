//! `clip-cluster command`: one operator command (feedback or erasure, the command topic's JSON
//! form, `clusterer::parse_request`) sent to the running daemon's API (default), queued on the
//! command topic, or applied to a stopped daemon's state directly.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::FutureRecord;

use crate::clusterer::{parse_request, request_json, Action, Clusterer, EraseTarget, Request};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The command as JSON, e.g. '{"op":"name","cluster_id":3,"name":"Ann"}' or
    /// '{"op":"erase_face","face_id":"cam1/0042"}'; "-" reads it from stdin. Without a
    /// `command_id` one is made (and printed): give your own to make a retry a no-op.
    pub json: String,
    /// api (the running daemon, at api.listen with api.token), kafka (queued on
    /// kafka.commands_topic) or state (store.path, with the daemon stopped; the events are sent
    /// when it starts).
    #[arg(long, default_value = "api")]
    pub via: String,
    /// The domain (when the daemon holds several).
    #[arg(long)]
    pub domain: Option<String>,
    /// The API's address (default: api.listen).
    #[arg(long)]
    pub api: Option<String>,
}

pub fn command(args: Args, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let text = if args.json == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        args.json.clone()
    };
    let mut v: serde_json::Value =
        serde_json::from_str(&text).context("the command is not JSON")?;
    if v.get("command_id").is_none() && v.is_object() {
        v["command_id"] = made_id().into();
    }
    if let (Some(d), true) = (&args.domain, v.is_object()) {
        v["domain"] = d.as_str().into();
    }
    let req = parse_request(v.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let reply = match args.via.as_str() {
        "api" => via_api(&cfg, args.api.as_deref(), &req)?,
        "kafka" => via_kafka(&cfg, &req)?,
        "state" => via_state(&cfg, &req)?,
        other => anyhow::bail!("--via {other:?}: expected api, kafka or state"),
    };
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}

/// A command id for a command sent without one: the time and the process.
fn made_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("cli-{}-{}", t.as_nanos(), std::process::id())
}

fn via_api(cfg: &Config, addr: Option<&str>, req: &Request) -> anyhow::Result<serde_json::Value> {
    let access = crate::api::Access::from_config(&cfg.api).map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = access.token.ok_or_else(|| {
        anyhow::anyhow!(
            "no API token: set api.token or api.token_file (or CLIP_CLUSTER__API__TOKEN)"
        )
    })?;
    let addr = addr.unwrap_or(&cfg.api.listen);
    let mut query = Vec::new();
    if let Some(d) = &req.domain {
        query.push(format!("domain={}", encode(d)));
    }
    let (method, path, body) = match &req.action {
        Action::Feedback(_) => ("POST", "/v1/feedback".to_string(), Some(request_json(req))),
        Action::Erase {
            target, compact, ..
        } => {
            if *compact {
                query.push("compact=true".into());
            }
            let path = match target {
                EraseTarget::Face(id) => format!("/v1/faces/{}", encode(id)),
                EraseTarget::Cluster(id) => format!("/v1/clusters/{id}"),
                EraseTarget::Source(id) => format!("/v1/sources/{}", encode(id)),
            };
            ("DELETE", path, None)
        }
    };
    let path = match (query.is_empty(), body.is_some()) {
        (false, false) => format!("{path}?{}", query.join("&")),
        _ => path,
    };
    let (status, reply) = http(addr, method, &path, &token, body.as_ref())
        .with_context(|| format!("the daemon's API at {addr} (is the daemon running? --via state applies the command to a stopped daemon's state)"))?;
    if !(200..300).contains(&status) {
        let msg = reply["error"].as_str().unwrap_or("no message").to_string();
        anyhow::bail!("the API refused the command ({status}): {msg}");
    }
    Ok(reply)
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved set).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request over a plain connection: (status, JSON body).
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    // An erasure with `compact=true` rebuilds the index before it answers: minutes at a million faces.
    s.set_read_timeout(Some(Duration::from_secs(1800)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP reply"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP reply: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let v = serde_json::from_str(&body).unwrap_or_else(|_| serde_json::json!({ "error": body }));
    Ok((status, v))
}

/// The body of a chunked reply.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

fn via_kafka(cfg: &Config, req: &Request) -> anyhow::Result<serde_json::Value> {
    let topic = &cfg.kafka.commands_topic;
    anyhow::ensure!(
        !topic.is_empty(),
        "kafka.commands_topic is empty: the daemon reads no command topic"
    );
    let payload = request_json(req).to_string();
    let key = req
        .domain
        .as_deref()
        .unwrap_or(req.action.command_id())
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (partition, offset) = rt.block_on(async {
        let producer = crate::pipeline::producer(&cfg.kafka)?;
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        let f = crate::pipeline::queue_send(&producer, record)
            .await
            .map_err(|e| anyhow::anyhow!("publishing to {topic}: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(30), f).await {
            Ok(Ok(Ok(d))) => Ok::<_, anyhow::Error>((d.partition, d.offset)),
            Ok(Ok(Err((e, _)))) => anyhow::bail!("publishing to {topic}: {e}"),
            Ok(Err(_)) => anyhow::bail!("publishing to {topic}: the producer went away"),
            Err(_) => anyhow::bail!(
                "publishing to {topic}: no acknowledgement within 30 s (brokers: {})",
                cfg.kafka.bootstrap_servers
            ),
        }
    })?;
    Ok(serde_json::json!({
        "queued": true,
        "command_id": req.action.command_id(),
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }))
}

fn via_state(cfg: &Config, req: &Request) -> anyhow::Result<serde_json::Value> {
    let mut cfg = cfg.clone();
    if cfg.daemon.domains == crate::config::DomainMode::PerPartition {
        let d = req.domain.as_deref().ok_or_else(|| {
            anyhow::anyhow!("daemon.domains = \"per_partition\": name the domain (--domain)")
        })?;
        cfg.store.path = cfg.state_dir(d);
    }
    anyhow::ensure!(
        crate::pipeline::domain::has_state(&cfg.store.path),
        "no state at {}",
        cfg.store.path.display()
    );
    let mut c = Clusterer::open(&cfg).with_context(|| {
        format!(
            "opening the state at {} (a running daemon holds it: use --via api)",
            cfg.store.path.display()
        )
    })?;
    match c.execute(&req.action, &[])? {
        Ok((report, _)) => Ok(report),
        Err(e) => anyhow::bail!("the command was refused: {e}"),
    }
}
