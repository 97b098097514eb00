//! Operator commands in one wire form, as the command topic and the CLI carry them: the API's
//! feedback commands and the erasures, one JSON object each:
//!
//! `{"command_id": "...", "op": "merge", "cluster_ids": [..], "domain": "..."}`, with `op` one
//! of `merge`, `split`, `not_in_cluster`, `assign`, `name`, `undo` (as `POST /v1/feedback`) or
//! `erase_face {face_id}`, `erase_cluster {cluster_id}`, `erase_source {source_id}` (as the
//! `DELETE` endpoints; optional `compact`). `domain` is optional where only one domain exists.
//!
//! `Clusterer::execute` applies one and commits it with the caller's positions (the command
//! topic's offsets) in the same batch, so a command is never applied twice by redelivery; a
//! feedback command is idempotent by its id besides.

use serde::Deserialize;

use super::*;
use crate::engine::feedback::Op;

/// What a command does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Feedback(Command),
    Erase {
        command_id: String,
        target: EraseTarget,
        compact: bool,
    },
}

impl Action {
    pub fn command_id(&self) -> &str {
        match self {
            Action::Feedback(c) => &c.command_id,
            Action::Erase { command_id, .. } => command_id,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Action::Feedback(c) => c.op.label(),
            Action::Erase { target, .. } => match target {
                EraseTarget::Face(_) => "erase_face",
                EraseTarget::Cluster(_) => "erase_cluster",
                EraseTarget::Source(_) => "erase_source",
            },
        }
    }
}

/// One command as sent: the domain it names (if any) and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub domain: Option<String>,
    pub action: Action,
}

#[derive(Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
enum EraseOp {
    #[serde(rename = "erase_face")]
    Face {
        face_id: String,
        #[serde(default)]
        compact: bool,
    },
    #[serde(rename = "erase_cluster")]
    Cluster {
        cluster_id: u64,
        #[serde(default)]
        compact: bool,
    },
    #[serde(rename = "erase_source")]
    Source {
        source_id: String,
        #[serde(default)]
        compact: bool,
    },
}

/// Parses one command's JSON; the error says what is wrong with it.
pub fn parse_request(bytes: &[u8]) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    request_from(v, true)
}

/// As `parse_request`, from a parsed body; `erasures`: whether the erase ops are taken (the API
/// has `DELETE` endpoints for them instead).
pub fn request_from(v: serde_json::Value, erasures: bool) -> Result<Request, String> {
    let serde_json::Value::Object(mut m) = v else {
        return Err("expected a JSON object".into());
    };
    let mut text = |k: &str| match m.remove(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{k} must be a string")),
    };
    let domain = text("domain")?;
    let command_id = text("command_id")?.ok_or(
        "command_id is missing (an id of your choosing: the command is applied once per id)",
    )?;
    let is_erase =
        matches!(m.get("op"), Some(serde_json::Value::String(o)) if o.starts_with("erase_"));
    let v = serde_json::Value::Object(m);
    let action = if is_erase {
        if !erasures {
            return Err("erasure is DELETE /v1/faces/{face_id}, /v1/clusters/{cluster_id} or /v1/sources/{source_id}".into());
        }
        let (target, compact) =
            match serde_json::from_value(v).map_err(|e| format!("bad command: {e}"))? {
                EraseOp::Face { face_id, compact } => (EraseTarget::Face(face_id), compact),
                EraseOp::Cluster {
                    cluster_id,
                    compact,
                } => (EraseTarget::Cluster(cluster_id), compact),
                EraseOp::Source { source_id, compact } => (EraseTarget::Source(source_id), compact),
            };
        Action::Erase {
            command_id,
            target,
            compact,
        }
    } else {
        let op: Op = serde_json::from_value(v).map_err(|e| format!("bad command: {e}"))?;
        Action::Feedback(Command { command_id, op })
    };
    Ok(Request { domain, action })
}

/// The wire form of a request (what `parse_request` reads back).
pub fn request_json(r: &Request) -> serde_json::Value {
    let mut v = match &r.action {
        Action::Feedback(c) => {
            let mut v = serde_json::to_value(&c.op).unwrap_or_default();
            v["command_id"] = serde_json::json!(c.command_id);
            v
        }
        Action::Erase {
            command_id,
            target,
            compact,
        } => {
            let mut v = serde_json::json!({ "command_id": command_id, "compact": compact });
            match target {
                EraseTarget::Face(id) => {
                    v["op"] = "erase_face".into();
                    v["face_id"] = id.as_str().into();
                }
                EraseTarget::Cluster(id) => {
                    v["op"] = "erase_cluster".into();
                    v["cluster_id"] = (*id).into();
                }
                EraseTarget::Source(id) => {
                    v["op"] = "erase_source".into();
                    v["source_id"] = id.as_str().into();
                }
            }
            v
        }
    };
    if let Some(d) = &r.domain {
        v["domain"] = d.as_str().into();
    }
    v
}

/// What `execute` did: the command's report as JSON and its events.
pub type Executed = (serde_json::Value, Vec<Event>);

impl Clusterer {
    /// Applies one command and commits it together with `positions` (pairs stored under `x:`,
    /// as `apply` takes them) before it returns; a refused or repeated command commits the
    /// positions alone. The inner error is the refusal (nothing else changed).
    pub fn execute(
        &mut self,
        action: &Action,
        positions: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Result<Executed, FeedbackError>, ClustererError> {
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
        Ok(match action {
            Action::Feedback(cmd) => self
                .feedback_at(cmd, positions)?
                .map(|(report, events)| (json(serde_json::to_value(&report)), events)),
            Action::Erase {
                target, compact, ..
            } => self
                .erase_at(target, *compact, positions)?
                .map(|(report, events)| (json(serde_json::to_value(&report)), events)),
        })
    }
}
