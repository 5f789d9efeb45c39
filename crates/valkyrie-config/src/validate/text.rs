//! Checks on string values: addresses, names, paths, patterns and choices.

use std::str::FromStr;

use crate::address::{self, Cidr, HostPort, CIDR_FORM, HOST_PATTERN_FORM, HOST_PORT_FORM};
use crate::error::ErrorKind;
use crate::nearest::nearest;

/// Constraint on a string value.
#[derive(Clone, Copy)]
pub(crate) enum Text {
    NonEmpty,
    /// An upstream, route or key table name: not empty, without control
    /// characters or surrounding spaces.
    Name,
    /// A listen address, `host:port` with port 0 to 65535.
    Listen,
    /// An upstream endpoint, `host:port` with port 1 to 65535.
    Endpoint,
    /// An IP address or CIDR range.
    Cidr,
    /// A DNS host name.
    HostName,
    /// An exact host name or `*.` followed by one.
    HostPattern,
    /// A URL path starting with `/`.
    UrlPath,
    /// A regular expression matched against a path.
    Regex,
    /// A regular expression matched against the raw bytes of a header value.
    HeaderRegex,
    /// An HTTP method from the IANA registry, in any case.
    Method,
    /// An HTTP field name (RFC 9110 token).
    HeaderName,
    /// An HTTP field value: no control characters except tab.
    HeaderValue,
    /// An RFC 9110 token, such as the pseudonym in `Via`.
    Token,
    /// An environment variable name.
    EnvVar,
    /// A tracing filter: a level or comma-separated `target=level` directives.
    LogFilter,
    /// A `redis://`, `rediss://` or `unix://` URL.
    RedisUrl,
    /// Key a rate limit counts per: `client_ip`, `route` or `header:NAME`.
    LimitKey,
    /// Request part that `consistent_hash` hashes: `client_ip`, `path` or `header:NAME`.
    HashKey,
    Choice(&'static [&'static str]),
}

/// Reason a value was rejected. The validator adds the key in front of the message.
pub(crate) struct Problem {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Problem {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn hint_if(self, hint: Option<String>) -> Self {
        match hint {
            Some(hint) => self.hint(hint),
            None => self,
        }
    }
}

/// HTTP methods of the IANA HTTP Method Registry, without `PRI`, which only
/// starts an HTTP/2 connection.
pub(crate) const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "QUERY",
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "COPY",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "ORDERPATCH",
    "PROPFIND",
    "PROPPATCH",
    "REBIND",
    "REPORT",
    "SEARCH",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Returns the choices as "`a`, `b` or `c`".
pub(crate) fn list_choices(choices: &[&str]) -> String {
    let quoted: Vec<String> = choices.iter().map(|choice| format!("`{choice}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

pub(crate) fn check_text(text: Text, value: &str) -> Result<(), Problem> {
    match text {
        Text::NonEmpty => check_non_empty(value),
        Text::Name => check_name(value),
        Text::Listen => check_host_port(value, "listen address", value.parse::<HostPort>()),
        Text::Endpoint => check_host_port(value, "endpoint", HostPort::parse_endpoint(value)),
        Text::Cidr => check_cidr(value),
        Text::HostName => address::check_host_name(value).map_err(|reason| {
            Problem::new(
                ErrorKind::InvalidValue,
                format!("invalid host name `{value}`: {reason}"),
            )
        }),
        Text::HostPattern => check_host_pattern(value),
        Text::UrlPath => check_url_path(value),
        Text::Regex => check_regex(value, regex::Regex::new(value).map(|_| ())),
        Text::HeaderRegex => check_regex(value, regex::bytes::Regex::new(value).map(|_| ())),
        Text::Method => check_method(value),
        Text::HeaderName => check_header_name(value),
        Text::HeaderValue => check_header_value(value),
        Text::Token => check_token(value, "name"),
        Text::EnvVar => check_env_var(value),
        Text::LogFilter => check_log_filter(value),
        Text::RedisUrl => check_redis_url(value),
        Text::LimitKey => check_keyed_choice(value, &["client_ip", "route"], "rate limit key"),
        Text::HashKey => check_keyed_choice(value, &["client_ip", "path"], "hash key"),
        Text::Choice(choices) => check_choice(value, choices),
    }
}

fn check_non_empty(value: &str) -> Result<(), Problem> {
    if value.trim().is_empty() {
        return Err(Problem::new(ErrorKind::InvalidValue, "the value is empty"));
    }
    Ok(())
}

fn check_name(value: &str) -> Result<(), Problem> {
    check_non_empty(value)?;
    if value.trim() != value {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            format!("name `{value}` has spaces at its start or end"),
        )
        .hint(format!("write \"{}\"", value.trim())));
    }
    if value.chars().any(char::is_control) {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            "the name contains control characters",
        ));
    }
    Ok(())
}

fn check_host_port(
    value: &str,
    what: &str,
    parsed: Result<HostPort, address::AddressError>,
) -> Result<(), Problem> {
    let error = match parsed {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    let problem = Problem::new(
        ErrorKind::InvalidAddress,
        format!("invalid {what} `{value}`: {}", error.reason),
    );
    Err(match error.suggestion {
        Some(suggestion) => problem.hint(format!(
            "write \"{suggestion}\" (expected {HOST_PORT_FORM})"
        )),
        None => problem.hint(format!("expected {HOST_PORT_FORM}")),
    })
}

fn check_cidr(value: &str) -> Result<(), Problem> {
    let error = match Cidr::from_str(value) {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    let problem = Problem::new(
        ErrorKind::InvalidAddress,
        format!("invalid address or CIDR range `{value}`: {}", error.reason),
    );
    Err(match error.suggestion {
        Some(suggestion) => problem.hint(format!("write \"{suggestion}\"")),
        None => problem.hint(format!("expected {CIDR_FORM}")),
    })
}

fn check_host_pattern(value: &str) -> Result<(), Problem> {
    let error = match address::check_host_pattern(value) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    let problem = Problem::new(
        ErrorKind::InvalidValue,
        format!("invalid host pattern `{value}`: {}", error.reason),
    );
    Err(match error.suggestion {
        Some(suggestion) => problem.hint(format!("write \"{suggestion}\"")),
        None => problem.hint(format!("expected {HOST_PATTERN_FORM}")),
    })
}

fn check_url_path(value: &str) -> Result<(), Problem> {
    if !value.starts_with('/') {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            format!("path `{value}` does not start with `/`"),
        )
        .hint(format!("write \"/{}\"", value.trim_start_matches('/'))));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
    {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            format!("path `{value}` contains {bad:?}, which never appears in a request path"),
        ));
    }
    Ok(())
}

fn check_regex(value: &str, compiled: Result<(), regex::Error>) -> Result<(), Problem> {
    let Err(error) = compiled else {
        return Ok(());
    };
    // A syntax error renders as several lines that repeat the pattern and
    // point at the column. The last line contains the reason.
    let rendered = error.to_string();
    let reason = rendered
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error: ");
    Err(Problem::new(
        ErrorKind::InvalidRegex,
        format!("invalid regex `{value}`: {reason}"),
    ))
}

/// Checks a method name, in any case: the router uppercases it.
fn check_method(value: &str) -> Result<(), Problem> {
    let upper = value.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) {
        return Ok(());
    }
    let problem = Problem::new(
        ErrorKind::InvalidValue,
        format!("unknown HTTP method `{value}`"),
    );
    Err(match nearest(&upper, METHODS.iter().copied()) {
        Some(near) => problem.hint(format!("did you mean \"{near}\"?")),
        None => problem.hint(format!(
            "expected a registered method such as {}",
            list_choices(&METHODS[..9])
        )),
    })
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn check_token(value: &str, what: &str) -> Result<(), Problem> {
    if value.is_empty() {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            format!("the {what} is empty"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !is_token_char(*c)) {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            format!("invalid {what} `{value}`: {bad:?} is not allowed"),
        )
        .hint("use letters, digits and `!#$%&'*+-.^_`|~` only"));
    }
    Ok(())
}

fn check_header_name(value: &str) -> Result<(), Problem> {
    if value.is_empty() {
        return Err(
            Problem::new(ErrorKind::InvalidValue, "the header name is empty")
                .hint("write the name of a request header, such as `X-Tenant`"),
        );
    }
    check_token(value, "header name")
}

fn check_header_value(value: &str) -> Result<(), Problem> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            "the header value contains control characters, which no request can carry",
        ));
    }
    Ok(())
}

fn check_env_var(value: &str) -> Result<(), Problem> {
    let mut chars = value.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Problem::new(
            ErrorKind::InvalidValue,
            format!("invalid environment variable name `{value}`"),
        )
        .hint("use letters, digits and `_`, not starting with a digit, such as \"VALKYRIE_ADMIN_TOKEN\""));
    }
    Ok(())
}

fn check_log_filter(value: &str) -> Result<(), Problem> {
    let form = "expected a level (`trace`, `debug`, `info`, `warn`, `error`, `off`) \
                or directives such as \"info,valkyrie_proxy=debug\"";
    let invalid = |reason: String| Problem::new(ErrorKind::InvalidValue, reason);
    if value.trim().is_empty() {
        return Err(invalid("the log level is empty".to_string()).hint(form));
    }
    for directive in value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        // A span filter such as `target[span{field=1}]=debug` contains `=`
        // inside its brackets, so the level follows the last `]`.
        let tail_start = directive.rfind(']').map_or(0, |index| index + 1);
        let level = match directive[tail_start..].rsplit_once('=') {
            Some((_, level)) => level,
            None if tail_start == 0 => directive,
            None => {
                return Err(invalid(format!("log directive `{directive}` has no level"))
                    .hint(format!("add one, such as \"{directive}=debug\"")));
            }
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let message = if level == value {
                format!("invalid log level `{level}`")
            } else {
                format!("invalid log level `{level}` in `{value}`")
            };
            let mut problem = invalid(message);
            problem = match nearest(level, LOG_LEVELS.iter().copied()) {
                Some(near) => problem.hint(format!("did you mean `{near}`?")),
                None if tail_start == 0 && !directive.contains('=') => problem.hint(format!(
                    "{form}. To set the level of target `{directive}`, write \"{directive}=debug\""
                )),
                None => problem.hint(form),
            };
            return Err(problem);
        }
        if let Err(error) = tracing_subscriber::filter::Directive::from_str(directive) {
            return Err(
                invalid(format!("invalid log directive `{directive}`: {error}")).hint(form),
            );
        }
    }
    Ok(())
}

fn check_redis_url(value: &str) -> Result<(), Problem> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    let rest = SCHEMES.iter().find_map(|scheme| value.strip_prefix(scheme));
    match rest {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(Problem::new(ErrorKind::InvalidAddress, format!("invalid Redis URL `{value}`"))
            .hint("expected a URL such as \"redis://127.0.0.1:6379\", \"rediss://cache.internal:6380/0\" or \"unix:///run/redis.sock\"")),
    }
}

/// Checks a value that is one of `choices` or `header:NAME`.
fn check_keyed_choice(value: &str, choices: &[&str], what: &str) -> Result<(), Problem> {
    if choices.contains(&value) {
        return Ok(());
    }
    if let Some(name) = value.strip_prefix("header:") {
        return check_header_name(name);
    }
    let mut all: Vec<&str> = choices.to_vec();
    all.push("header:NAME");
    let problem = Problem::new(ErrorKind::InvalidValue, format!("invalid {what} `{value}`"))
        .hint(format!("expected {}", list_choices(&all)));
    Err(problem)
}

fn check_choice(value: &str, choices: &[&str]) -> Result<(), Problem> {
    if choices.contains(&value) {
        return Ok(());
    }
    let suggestion =
        nearest(value, choices.iter().copied()).map(|near| format!("did you mean `{near}`?"));
    Err(Problem::new(
        ErrorKind::InvalidValue,
        format!(
            "invalid value `{value}`: expected {}",
            list_choices(choices)
        ),
    )
    .hint_if(suggestion))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: Text, value: &str) -> String {
        match check_text(text, value) {
            Ok(()) => String::new(),
            Err(problem) => problem.message,
        }
    }

    fn hint(text: Text, value: &str) -> String {
        check_text(text, value)
            .err()
            .and_then(|problem| problem.hint)
            .unwrap_or_default()
    }

    #[test]
    fn choices_list_reads_as_english() {
        assert_eq!(list_choices(&["json"]), "`json`");
        assert_eq!(list_choices(&["json", "text"]), "`json` or `text`");
        assert_eq!(list_choices(&["a", "b", "c"]), "`a`, `b` or `c`");
    }

    #[test]
    fn log_filters() {
        for valid in [
            "info",
            "WARN",
            "info,valkyrie_proxy=debug",
            "valkyrie[request{id=1}]=trace",
            "off",
        ] {
            assert!(check_text(Text::LogFilter, valid).is_ok(), "{valid}");
        }
        assert_eq!(
            message(Text::LogFilter, "infoo"),
            "invalid log level `infoo`"
        );
        assert_eq!(
            message(Text::LogFilter, "info,x=loud"),
            "invalid log level `loud` in `info,x=loud`"
        );
        assert_eq!(hint(Text::LogFilter, "infoo"), "did you mean `info`?");
        assert!(check_text(Text::LogFilter, "valkyrie_proxy").is_err());
        assert!(check_text(Text::LogFilter, "info,hyper=loud").is_err());
        assert!(check_text(Text::LogFilter, "").is_err());
        assert!(check_text(Text::LogFilter, "x[=info").is_err());
    }

    #[test]
    fn methods() {
        assert!(check_text(Text::Method, "GET").is_ok());
        assert!(check_text(Text::Method, "PROPFIND").is_ok());
        assert!(check_text(Text::Method, "get").is_ok());
        assert_eq!(hint(Text::Method, "GTE"), "did you mean \"GET\"?");
        assert_eq!(
            message(Text::Method, "FETCH"),
            "unknown HTTP method `FETCH`"
        );
        assert!(check_text(Text::Method, "PRI").is_err());
    }

    #[test]
    fn url_paths() {
        assert!(check_text(Text::UrlPath, "/v1/").is_ok());
        assert_eq!(hint(Text::UrlPath, "v1/"), "write \"/v1/\"");
        assert!(check_text(Text::UrlPath, "/a b").is_err());
        assert!(check_text(Text::UrlPath, "/a?b=1").is_err());
    }

    #[test]
    fn regex_reason_is_one_line() {
        let text = message(Text::Regex, "(");
        assert!(text.starts_with("invalid regex `(`: "), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(check_text(Text::Regex, "^/v[0-9]+/").is_ok());
    }

    #[test]
    fn keyed_choices() {
        assert!(check_text(Text::LimitKey, "client_ip").is_ok());
        assert!(check_text(Text::LimitKey, "header:X-Api-Key").is_ok());
        assert!(check_text(Text::LimitKey, "header:bad name").is_err());
        assert_eq!(
            hint(Text::HashKey, "cookie"),
            "expected `client_ip`, `path` or `header:NAME`"
        );
    }

    #[test]
    fn other_strings() {
        assert!(check_text(Text::Name, "api").is_ok());
        assert!(check_text(Text::Name, " api").is_err());
        assert!(check_text(Text::Name, "").is_err());
        assert!(check_text(Text::EnvVar, "VALKYRIE_TOKEN").is_ok());
        assert!(check_text(Text::EnvVar, "1TOKEN").is_err());
        assert!(check_text(Text::RedisUrl, "redis://127.0.0.1:6379").is_ok());
        assert!(check_text(Text::RedisUrl, "127.0.0.1:6379").is_err());
        assert!(check_text(Text::HeaderValue, "a\r\nb").is_err());
        assert!(check_text(Text::Token, "valkyrie").is_ok());
        assert!(check_text(Text::Token, "valkyrie proxy").is_err());
        assert_eq!(
            hint(Text::Choice(&["json", "text"]), "jsn"),
            "did you mean `json`?"
        );
    }
}
