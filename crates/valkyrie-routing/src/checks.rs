//! Checks that need more than the config crate: routes the router proves
//! unreachable.

use std::path::Path;

use valkyrie_config::Config;

/// Returns one error per route that can never match because an earlier,
/// equally specific route takes every request it would. Lines are found by
/// the route's `name` in the file text.
pub fn unreachable_routes(config: &Config, text: &str, file: &Path) -> Vec<String> {
    valkyrie_router::never_matching_routes(config)
        .into_iter()
        .map(|(shadowed, earlier)| {
            let shadowed_name = &config.routes[shadowed].name;
            let earlier_name = &config.routes[earlier].name;
            let line = route_line(text, shadowed_name).unwrap_or(1);
            let earlier_line = route_line(text, earlier_name)
                .map(|line| format!(" at line {line}"))
                .unwrap_or_default();
            format!(
                "{}:{line}:1: route `{shadowed_name}` (routes[{shadowed}]) can never match: route `{earlier_name}`{earlier_line} matches every request it would and comes first\n  hint: remove `{shadowed_name}`, or make it more specific than `{earlier_name}`",
                file.display()
            )
        })
        .collect()
}

/// Finds the line of `name = "NAME"` in a `[[routes]]` table.
fn route_line(text: &str, name: &str) -> Option<usize> {
    let mut in_routes = false;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_routes = trimmed == "[[routes]]";
            continue;
        }
        if !in_routes {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        if key.trim() == "name" && value.trim().trim_matches(|c| c == '"' || c == '\'') == name {
            return Some(index + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadowed_route_reported_with_lines() {
        let text = r#"
[[upstreams]]
name = "api"
endpoints = ["127.0.0.1:9001"]

[[routes]]
name = "all"
path_prefix = "/"
methods = ["GET"]
upstream = "api"

[[routes]]
name = "never"
path_prefix = "/"
methods = ["GET"]
upstream = "api"
"#;
        let config = valkyrie_config::parse_str(text, "t.toml");
        // The config crate already rejects identical conditions; the router
        // check must agree on the same input.
        let config: Config = match config {
            Ok(config) => config,
            Err(_) => toml::from_str(text).unwrap(),
        };
        let errors = unreachable_routes(&config, text, Path::new("t.toml"));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("t.toml:13:1: route `never`"),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("at line 7"), "{}", errors[0]);
    }
}
