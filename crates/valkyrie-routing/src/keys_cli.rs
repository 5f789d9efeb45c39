//! `valkyrie-routing keys set|delete|import`: writes a key table kept in a
//! Redis hash the way every router expects, each change followed by a
//! message naming the changed keys (see `valkyrie_proxy::keysync`).
//!
//! Every target is checked against the upstreams of the config before
//! anything is written, so a typo fails here instead of being skipped by
//! every router.

use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;

use valkyrie_config::{Config, TableSource};
use valkyrie_proxy::keys::parse_target;
use valkyrie_proxy::keysync;
use valkyrie_router::keys::{parse_entries_all, UpstreamNames};

use crate::cli::{KeysAction, KeysArgs};

/// Invalid lines listed before the rest are only counted.
const LISTED_ERRORS: usize = 20;

/// Runs a `keys` subcommand and returns the exit code.
pub fn run(config_path: &Path, args: KeysArgs) -> ExitCode {
    match execute(config_path, args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The Redis hash behind a key table, and where to write it.
struct Target {
    table: String,
    hash: String,
    url: String,
    names: UpstreamNames,
}

fn execute(config_path: &Path, args: KeysArgs) -> Result<String, String> {
    let config = crate::cli::load_checked(config_path).map_err(|errors| {
        format!("{errors}\nthe keys commands read the router's config for the table's hash and upstreams; give it with --config FILE")
    })?;
    let table = match &args.action {
        KeysAction::Set { table, .. }
        | KeysAction::Delete { table, .. }
        | KeysAction::Import { table, .. } => table.clone(),
    };
    let target = find_target(&config, config_path, &table, args.redis_url.as_deref())?;
    match args.action {
        KeysAction::Set {
            key, target: value, ..
        } => set(&target, &key, &value),
        KeysAction::Delete { keys, .. } => delete(&target, &keys),
        KeysAction::Import { file, replace, .. } => import(&target, &file, replace),
    }
}

fn find_target(
    config: &Config,
    config_path: &Path,
    table: &str,
    redis_url: Option<&str>,
) -> Result<Target, String> {
    let Some(table_config) = config.key_tables.iter().find(|entry| entry.name == table) else {
        let names: Vec<&str> = config
            .key_tables
            .iter()
            .map(|entry| entry.name.as_str())
            .collect();
        return Err(format!(
            "{} has no key table `{table}`; its key tables are: {}",
            config_path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    let hash = match &table_config.source {
        TableSource::RedisHash(hash) => hash.clone(),
        TableSource::File(file) => {
            return Err(format!(
                "key table `{table}` reads file `{file}`, not Redis; edit the file and reload, or use POST /admin/keys"
            ))
        }
    };
    let url = redis_url
        .map(str::to_string)
        .or_else(|| config.redis.as_ref().map(|redis| redis.url.clone()))
        .unwrap_or_else(|| keysync::DEFAULT_URL.to_string());
    Ok(Target {
        table: table.to_string(),
        hash,
        url,
        names: UpstreamNames::new(config),
    })
}

/// Checks a key and a target and returns the value stored in the hash.
fn checked_value(target: &Target, key: &str, value: &str) -> Result<String, String> {
    keysync::check_key(key.as_bytes())?;
    let (upstream, endpoint) = parse_target(value)?;
    target
        .names
        .resolve(&upstream, endpoint.as_deref())
        .map_err(|problem| format!("key `{key}`: {problem}"))?;
    Ok(match endpoint {
        Some(endpoint) => format!("{upstream},{endpoint}"),
        None => upstream,
    })
}

fn set(target: &Target, key: &str, value: &str) -> Result<String, String> {
    let value = checked_value(target, key, value)?;
    let mut connection = keysync::connect(&target.url)?;
    let summary = keysync::write_changes(
        &mut connection,
        &target.hash,
        &[(key.to_string(), value.clone())],
        &[],
    )
    .map_err(|error| redis_failed(target, &error))?;
    Ok(format!(
        "key table `{}`: set `{key}` to `{value}` in Redis hash `{}`; {}",
        target.table,
        target.hash,
        receivers(target, summary)
    ))
}

/// Describes who received the change messages. No subscriber means no
/// router follows the hash on this server, which deserves a warning.
fn receivers(target: &Target, summary: keysync::WriteSummary) -> String {
    match summary.receivers {
        0 => format!(
            "warning: no router is subscribed to channel `{}`, so none applied the change yet (routers read the whole hash when they start or reconnect)",
            target.hash
        ),
        1 => "1 subscribed router received the change".to_string(),
        count => format!("{count} subscribed routers received the change"),
    }
}

fn plural(count: usize, singular: &str, plural_form: &str) -> String {
    if count == 1 {
        format!("1 {singular}")
    } else {
        format!("{count} {plural_form}")
    }
}

fn delete(target: &Target, keys: &[String]) -> Result<String, String> {
    for key in keys {
        keysync::check_key(key.as_bytes())?;
    }
    let mut connection = keysync::connect(&target.url)?;
    let summary = keysync::write_changes(&mut connection, &target.hash, &[], keys)
        .map_err(|error| redis_failed(target, &error))?;
    Ok(format!(
        "key table `{}`: deleted {} of the {} given from Redis hash `{}` (the others were not in it); {}",
        target.table,
        plural(summary.deleted as usize, "key", "keys"),
        keys.len(),
        target.hash,
        receivers(target, summary)
    ))
}

fn import(target: &Target, file: &Path, replace: bool) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|error| {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        format!(
            "cannot read {}: {error}; FILE is relative to the current directory, not to the config file",
            absolute.display()
        )
    })?;
    let (lines, errors) = parse_entries_all(&text, LISTED_ERRORS + 1);
    let mut problems: Vec<(usize, String)> = errors
        .into_iter()
        .map(|error| (error.line, error.message))
        .collect();
    let mut upserts = Vec::with_capacity(lines.len());
    for line in &lines {
        let value = match line.endpoint {
            Some(endpoint) => format!("{},{endpoint}", line.upstream),
            None => line.upstream.to_string(),
        };
        match checked_value(target, line.key, &value) {
            Ok(value) => upserts.push((line.key.to_string(), value)),
            Err(problem) => problems.push((line.line, problem)),
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|(line, _)| *line);
        let count = problems.len();
        let mut message: Vec<String> = problems
            .into_iter()
            .take(LISTED_ERRORS)
            .map(|(line, problem)| format!("{}:{line}: {problem}", file.display()))
            .collect();
        if count > LISTED_ERRORS {
            message.push("... and more".to_string());
        }
        return Err(format!(
            "invalid lines in {}; nothing was written:\n{}",
            file.display(),
            message.join("\n")
        ));
    }
    let mut connection = keysync::connect(&target.url)?;
    let mut deletes = Vec::new();
    if replace {
        let listed: HashSet<&str> = upserts.iter().map(|(key, _)| key.as_str()).collect();
        deletes = keysync::hash_keys(&mut connection, &target.hash)
            .map_err(|error| redis_failed(target, &error))?
            .into_iter()
            .filter(|key| !listed.contains(key.as_str()))
            .collect();
    }
    let written = keysync::write_changes(&mut connection, &target.hash, &upserts, &deletes)
        .map_err(|error| redis_failed(target, &error))?;
    let mut summary = format!(
        "key table `{}`: wrote {} from {} to Redis hash `{}`",
        target.table,
        plural(upserts.len(), "entry", "entries"),
        file.display(),
        target.hash
    );
    if replace {
        summary.push_str(&format!(
            ", deleted {} the file does not list",
            plural(written.deleted as usize, "key", "keys")
        ));
    }
    summary.push_str(&format!(
        ", in {}; {}",
        plural(written.messages, "transaction", "transactions"),
        receivers(target, written)
    ));
    Ok(summary)
}

fn redis_failed(target: &Target, error: &impl std::fmt::Display) -> String {
    format!(
        "writing Redis hash `{}` at {} failed: {error}; changes already published stay applied, so run the command again",
        target.hash,
        keysync::display_address(&target.url)
    )
}
