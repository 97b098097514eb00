//! Merging the layers: the built-in defaults, an optional file, environment variables and
//! command-line flags (`Overrides`), in that order; any key the defaults do not have is refused
//! with its origin.

use std::path::{Path, PathBuf};

use super::*;

/// What command-line flags set, as typed values. They are applied over the file and the
/// environment as one more layer of the raw configuration, so a flag's value is checked like any
/// other (unknown variants, ranges) and an error names the flag.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `daemon.role` (`run --role`).
    pub role: Option<String>,
    /// `kafka.bootstrap_servers` (`produce --brokers`).
    pub bootstrap_servers: Option<String>,
    /// `model.dim`: the width of the vectors a command was given (`eval`, `bench`).
    pub model_dim: Option<usize>,
    /// `store.path` (`bench`: its scratch state).
    pub store_path: Option<PathBuf>,
    /// `index.capacity_hint` (`bench`: the face count).
    pub index_capacity_hint: Option<usize>,
    /// `embed.chip` (`--chip aligned|centre`).
    pub embed_chip: Option<String>,
}

impl Overrides {
    /// (section, key, value, the flag that set it).
    fn entries(&self) -> Vec<(&'static str, &'static str, toml::Value, &'static str)> {
        let int = |n: usize| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Some(r) = &self.role {
            out.push(("daemon", "role", toml::Value::String(r.clone()), "--role"));
        }
        if let Some(b) = &self.bootstrap_servers {
            out.push((
                "kafka",
                "bootstrap_servers",
                toml::Value::String(b.clone()),
                "--brokers",
            ));
        }
        if let Some(d) = self.model_dim {
            out.push(("model", "dim", int(d), "the vectors' width"));
        }
        if let Some(p) = &self.store_path {
            let path = toml::Value::String(p.display().to_string());
            out.push(("store", "path", path, "the command's state directory"));
        }
        if let Some(n) = self.index_capacity_hint {
            out.push(("index", "capacity_hint", int(n), "--faces"));
        }
        if let Some(c) = &self.embed_chip {
            out.push(("embed", "chip", toml::Value::String(c.clone()), "--chip"));
        }
        out
    }
}

impl Config {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_from(file, &env)
    }

    /// Defaults, then `file`, then the process environment, then the command line's `flags`.
    pub fn load_overriding(file: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_with(file, &env, flags)
    }

    /// As `load`, with the environment given explicitly (tests).
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        Self::load_with(file, env, &Overrides::default())
    }

    /// Every layer given explicitly: defaults, `file`, `env`, `flags`.
    pub fn load_with(
        file: Option<&Path>,
        env: &[(String, String)],
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let defaults: toml::Table =
            DEFAULT_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: PathBuf::from("config/default.toml (built in)"),
                    reason: e.to_string(),
                })?;
        let mut merged = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            overlay(
                &mut merged,
                &defaults,
                table,
                "",
                &path.display().to_string(),
            )?;
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let value = parse_env_value(raw);
            let mut table = toml::Table::new();
            let mut cursor = &mut table;
            for (i, part) in parts.iter().enumerate() {
                if i + 1 == parts.len() {
                    cursor.insert(part.clone(), value.clone());
                } else {
                    cursor = cursor
                        .entry(part.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .ok_or_else(|| ConfigError::Type(format!("bad variable {name}")))?;
                }
            }
            overlay(
                &mut merged,
                &defaults,
                table,
                "",
                &format!("environment variable {name}"),
            )?;
        }
        for (section, key, value, flag) in flags.entries() {
            let mut inner = toml::Table::new();
            inner.insert(key.to_string(), value);
            let mut table = toml::Table::new();
            table.insert(section.to_string(), toml::Value::Table(inner));
            overlay(
                &mut merged,
                &defaults,
                table,
                "",
                &format!("command-line flag {flag}"),
            )?;
        }
        let cfg: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Type(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Writes `src` over `dst`, refusing any key the defaults do not have.
fn overlay(
    dst: &mut toml::Table,
    defaults: &toml::Table,
    src: toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (key, value) in src {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if FREE_FORM.contains(&prefix) {
            // librdkafka properties: any name, string values (numbers and booleans are written
            // as librdkafka expects them).
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(ConfigError::Type(format!(
                        "{path} (from {origin}) must be a string, number or boolean"
                    )))
                }
            };
            dst.insert(key, toml::Value::String(text));
            continue;
        }
        let Some(default) = defaults.get(&key) else {
            let known: Vec<String> = defaults
                .keys()
                .map(|k| {
                    if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    }
                })
                .collect();
            return Err(ConfigError::UnknownKey {
                key: path,
                origin: origin.to_string(),
                known: known.join(", "),
            });
        };
        match (default, value) {
            (toml::Value::Table(def_t), toml::Value::Table(src_t)) => {
                let dst_t = dst
                    .get_mut(&key)
                    .and_then(|v| v.as_table_mut())
                    .ok_or_else(|| ConfigError::NotATable {
                        key: path.clone(),
                        origin: origin.to_string(),
                    })?;
                overlay(dst_t, def_t, src_t, &path, origin)?;
            }
            (toml::Value::Table(_), _) => {
                return Err(ConfigError::NotATable {
                    key: path,
                    origin: origin.to_string(),
                })
            }
            (_, v) => {
                dst.insert(key, v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_file_in_config_dir_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name().is_some_and(|n| n == "prompts.toml") {
                // Not a configuration: CLIP's attribute prompts ([clip] prompts).
                crate::hallucinate::prompts::Prompts::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            } else if p.extension().is_some_and(|e| e == "toml") {
                Config::load_from(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn file_then_env_override_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "[engine]\nk = 7\nt1 = 0.5\n");
        let env = vec![("CLIP_CLUSTER__ENGINE__T1".to_string(), "0.75".to_string())];
        let c = Config::load_from(Some(&p), &env).unwrap();
        assert_eq!(c.engine.k, 7);
        assert_eq!(c.engine.t1, 0.75);
        let env = vec![(
            "CLIP_CLUSTER__STORE__PATH".to_string(),
            "/tmp/x y".to_string(),
        )];
        let c = Config::load_from(None, &env).unwrap();
        assert_eq!(c.store.path, PathBuf::from("/tmp/x y"));
    }

    #[test]
    fn the_message_key_is_not_the_face_id_unless_configured() {
        // Producers key by domain for scale-out: the key must not silently become the face id.
        let c = Config::defaults().unwrap();
        assert!(!c.source.key_is_face_id);
        assert!(!crate::decode::Limits::from_config(&c).key_is_face_id);
        let env = vec![(
            "CLIP_CLUSTER__SOURCE__KEY_IS_FACE_ID".to_string(),
            "true".to_string(),
        )];
        let c = Config::load_from(None, &env).unwrap();
        assert!(crate::decode::Limits::from_config(&c).key_is_face_id);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "[engine]\nkk = 7\n");
        let e = Config::load_from(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            e.contains("engine.kk") && e.contains("engine.search_k"),
            "{e}"
        );
        let p = write(d.path(), "[enigne]\nk = 7\n");
        assert!(Config::load_from(Some(&p), &[])
            .unwrap_err()
            .to_string()
            .contains("enigne"));
        let env = vec![("CLIP_CLUSTER__ENGINE__NOPE".to_string(), "1".to_string())];
        let e = Config::load_from(None, &env).unwrap_err().to_string();
        assert!(
            e.contains("engine.nope") && e.contains("CLIP_CLUSTER__ENGINE__NOPE"),
            "{e}"
        );
    }

    #[test]
    fn librdkafka_properties_pass_through_any_name() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\n[kafka.consumer_properties]\n\"fetch.min.bytes\" = 1024\n",
        );
        let env = vec![(
            "CLIP_CLUSTER__KAFKA__PRODUCER_PROPERTIES__LINGER.MS".to_string(),
            "7".to_string(),
        )];
        let c = Config::load_from(Some(&p), &env).unwrap();
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(c.kafka.consumer_properties["fetch.min.bytes"], "1024");
        assert_eq!(c.kafka.producer_properties["linger.ms"], "7");
        // Outside those tables, names are still checked.
        let p = write(d.path(), "[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n");
        assert!(Config::load_from(Some(&p), &[]).is_err());
    }

    #[test]
    fn domains_per_partition_with_renames() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.daemon.domains, DomainMode::Single);
        assert_eq!(c.domain_of("faces", 3), "default");
        assert_eq!(c.state_dir("default"), c.store.path);
        let p = write(
            d.path(),
            "[daemon]\ndomains = \"per_partition\"\n[daemon.domain_names]\n\"faces-1\" = \"tenant-acme\"\n",
        );
        let c = Config::load_from(Some(&p), &[]).unwrap();
        assert_eq!(c.daemon.domains, DomainMode::PerPartition);
        assert_eq!(c.domain_of("faces", 3), "faces-3");
        assert_eq!(c.domain_of("faces", 1), "tenant-acme");
        assert_eq!(c.state_dir("faces-3"), c.store.path.join("faces-3"));
        let env = vec![(
            "CLIP_CLUSTER__DAEMON__DOMAINS".to_string(),
            "per_partition".to_string(),
        )];
        assert!(Config::load_from(None, &env).is_ok());
        for text in [
            "[daemon]\ndomains = \"per-topic\"\n",
            "[daemon.domain_names]\n\"other-1\" = \"a\"\n",
            "[daemon.domain_names]\n\"faces-x\" = \"a\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"../a\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \".hidden\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"a b\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"db\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"faces-2\"\n",
            "[daemon.domain_names]\n\"faces-1\" = \"a\"\n\"faces-2\" = \"a\"\n",
        ] {
            let p = write(d.path(), text);
            let e = Config::load_from(Some(&p), &[]).unwrap_err().to_string();
            assert!(e.contains("daemon.domain"), "{text}: {e}");
        }
        // A partition may keep its own name explicitly.
        let p = write(
            d.path(),
            "[daemon.domain_names]\n\"faces-1\" = \"faces-1\"\n",
        );
        assert!(Config::load_from(Some(&p), &[]).is_ok());
    }

    #[test]
    fn flags_override_the_environment_and_are_checked_like_any_value() {
        let env = vec![(
            "CLIP_CLUSTER__DAEMON__ROLE".to_string(),
            "\"embed\"".to_string(),
        )];
        let flags = Overrides {
            role: Some("cluster".into()),
            model_dim: Some(64),
            ..Default::default()
        };
        let c = Config::load_with(None, &env, &flags).unwrap();
        assert_eq!(c.daemon.role, Role::Cluster);
        assert_eq!(c.model.dim, 64);
        let c = Config::load_with(None, &env, &Overrides::default()).unwrap();
        assert_eq!(c.daemon.role, Role::Embed);
        let bad = Overrides {
            role: Some("everything".into()),
            ..Default::default()
        };
        let e = Config::load_with(None, &[], &bad).unwrap_err().to_string();
        assert!(e.contains("everything"), "{e}");
    }
}
