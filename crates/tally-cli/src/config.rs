//! Configuration layers: defaults in code, then `tally.toml` (or `--config FILE`), then
//! `TALLY_*` environment variables, then flags.
//!
//! The file is applied by copying each of its keys into the matching `TALLY_*` variable when
//! that variable is not already set; clap then reads flags first and variables second, which
//! gives exactly "flags win over env, env over the file, the file over defaults".

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The file read when `--config` is not given, from the working directory.
pub const CONFIG_FILE_DEFAULT: &str = "tally.toml";

/// Keys the file may hold; each maps to `TALLY_<KEY>` in upper case.
pub const CONFIG_KEYS: &[&str] = &[
    "database_url",
    "tenancy",
    "pg_schema",
    "max_event_age",
    "listen",
    "admin_key",
    "log_format",
    "metrics_token",
    "no_migrate",
    "writers",
    "cookie_secure",
    "webhook_retry_initial",
    "webhook_retry_max_delay",
    "webhook_retry_window",
    "webhook_timeout",
    "webhook_ca_file",
];

/// Finds `--config FILE` or `--config=FILE` in the raw arguments.
pub fn config_path_from_args(args: &[String]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Reads the config file (an explicit one must exist; the default one may be absent) and
/// exports its keys as `TALLY_*` variables that are not set yet.
pub fn apply_config_file(explicit: Option<&Path>) -> anyhow::Result<()> {
    let (path, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(CONFIG_FILE_DEFAULT), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading config file {}", path.display())),
    };
    for (key, value) in parse_config(&text).with_context(|| format!("in config file {}", path.display()))? {
        let var = format!("TALLY_{}", key.to_ascii_uppercase());
        if std::env::var_os(&var).is_none() {
            // SAFETY: called once at start-up, before any thread is spawned.
            unsafe { std::env::set_var(&var, value) };
        }
    }
    Ok(())
}

/// The file's keys and values as strings; unknown keys are an error, not ignored.
pub fn parse_config(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(text).context("not valid TOML")?;
    let mut out = Vec::new();
    for (key, value) in table {
        if !CONFIG_KEYS.contains(&key.as_str()) {
            bail!("unknown key {key:?} (known: {})", CONFIG_KEYS.join(", "));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("key {key:?} must be a string, number or boolean, got {}", other.type_str()),
        };
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_known_keys_only() {
        let ok = parse_config("database_url = \"sqlite://x.db\"\nmax_event_age = \"7d\"\n").unwrap();
        assert_eq!(ok.len(), 2);
        let err = parse_config("databse_url = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown key \"databse_url\""), "{err}");
        assert!(parse_config("listen = [1]").is_err());
    }

    #[test]
    fn config_flag_is_found_in_both_spellings() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_path_from_args(&args(&["tally", "--config", "a.toml", "usage"])),
            Some("a.toml".into())
        );
        assert_eq!(config_path_from_args(&args(&["tally", "--config=b.toml"])), Some("b.toml".into()));
        assert_eq!(config_path_from_args(&args(&["tally", "usage"])), None);
    }
}
