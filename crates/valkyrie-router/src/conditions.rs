//! The conditions of a compiled route and its specificity, which orders routes
//! when several match one request.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The host condition of a route. Hosts are stored normalized: ASCII
/// lowercase, without a port and without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// No host condition (`host` unset): matches every request, including
    /// one without a host.
    Any,
    /// One host name or IP literal, shared by the routes of that host.
    Exact(Arc<str>),
    /// `*.example.com`, stored as the suffix `example.com`: matches any host
    /// with at least one more label in front of the suffix, so
    /// `a.example.com` and `a.b.example.com` but not `example.com`.
    Wildcard(Arc<str>),
}

impl HostPattern {
    /// Checks a request host that has already been normalized.
    pub fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (_, None) => false,
            (HostPattern::Exact(exact), Some(host)) => **exact == *host,
            (HostPattern::Wildcard(suffix), Some(host)) => wildcard_matches(suffix, host),
        }
    }

    /// Returns the host part of the route's specificity.
    pub fn rank(&self) -> HostRank {
        match self {
            HostPattern::Any => HostRank::Any,
            HostPattern::Wildcard(suffix) => HostRank::Wildcard {
                labels: suffix.split('.').count(),
            },
            HostPattern::Exact(_) => HostRank::Exact,
        }
    }
}

/// Checks that `host` is `<one or more labels>.<suffix>`.
pub(crate) fn wildcard_matches(suffix: &str, host: &str) -> bool {
    match host
        .strip_suffix(suffix)
        .and_then(|head| head.strip_suffix('.'))
    {
        Some(labels) => !labels.is_empty(),
        None => false,
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// The path condition of a route, compared with the normalized request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// No path condition.
    Any,
    /// `path_exact`, normalized like request paths.
    Exact(Box<str>),
    /// `path_prefix`, normalized like request paths. A plain string prefix:
    /// `/api` also matches `/apiary`, so end it with `/` to match whole
    /// segments only.
    Prefix(Box<str>),
    /// `path_regex`, which must match the whole normalized path.
    Regex(Box<PathRegex>),
}

impl PathPattern {
    /// Checks a request path that has already been normalized.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(exact) => **exact == *path,
            PathPattern::Prefix(prefix) => path.starts_with(&**prefix),
            PathPattern::Regex(regex) => regex.is_match(path),
        }
    }

    /// Returns the path part of the route's specificity.
    pub fn rank(&self) -> PathRank {
        match self {
            PathPattern::Any => PathRank::Any,
            PathPattern::Regex(_) => PathRank::Regex,
            PathPattern::Prefix(prefix) => PathRank::Prefix { len: prefix.len() },
            PathPattern::Exact(_) => PathRank::Exact,
        }
    }
}

/// A `path_regex`, compiled to match the whole normalized path.
#[derive(Clone, Debug)]
pub struct PathRegex {
    source: String,
    regex: regex::Regex,
}

impl PathRegex {
    /// Compiles `source` anchored at both ends of the path.
    pub fn new(source: &str) -> Result<PathRegex, regex::Error> {
        // Compiling the pattern alone first rejects input such as `a)|(b`,
        // which would parse once wrapped and change its meaning.
        regex::Regex::new(source)?;
        let regex = regex::Regex::new(&anchored(source))?;
        Ok(PathRegex {
            source: source.to_owned(),
            regex,
        })
    }

    /// The pattern as written in the config, without the anchors.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for PathRegex {}

fn anchored(source: &str) -> String {
    format!(r"\A(?:{source})\z")
}

/// A header condition: the request must carry the header, with a value that
/// satisfies `value` when the header appears more than once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderCondition {
    pub name: HeaderName,
    pub value: HeaderValueMatch,
}

impl HeaderCondition {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|value| self.value.matches(value))
    }
}

/// What a header condition requires of the header's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValueMatch {
    /// Only that the header is present.
    Present,
    /// The value, byte for byte (case-sensitive).
    Exact(HeaderValue),
    /// A regex that must match the whole value.
    Regex(HeaderRegex),
}

impl HeaderValueMatch {
    pub fn matches(&self, value: &HeaderValue) -> bool {
        match self {
            HeaderValueMatch::Present => true,
            HeaderValueMatch::Exact(expected) => expected == value,
            HeaderValueMatch::Regex(regex) => regex.is_match(value.as_bytes()),
        }
    }
}

/// A header `regex`, compiled to match the whole value. It runs on the raw
/// bytes, so values with non-ASCII bytes can match too.
#[derive(Clone, Debug)]
pub struct HeaderRegex {
    source: String,
    regex: regex::bytes::Regex,
}

impl HeaderRegex {
    /// Compiles `source` anchored at both ends of the value.
    pub fn new(source: &str) -> Result<HeaderRegex, regex::Error> {
        regex::bytes::Regex::new(source)?;
        let regex = regex::bytes::Regex::new(&anchored(source))?;
        Ok(HeaderRegex {
            source: source.to_owned(),
            regex,
        })
    }

    /// The pattern as written in the config, without the anchors.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &[u8]) -> bool {
        self.regex.is_match(value)
    }
}

impl PartialEq for HeaderRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for HeaderRegex {}

/// How specific a route is. When several routes match a request, the one with
/// the greatest specificity wins, and among equal ones the one that comes
/// first in the config.
///
/// The derived ordering compares the fields in declaration order, so the host
/// decides first, then the path, then the number of header conditions, then
/// whether the route restricts methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    pub host: HostRank,
    pub path: PathRank,
    pub header_conditions: usize,
    pub method_restricted: bool,
}

/// Host part of [`Specificity`], least specific first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostRank {
    Any,
    /// A wildcard; one with more labels in its suffix is more specific.
    Wildcard {
        labels: usize,
    },
    Exact,
}

/// Path part of [`Specificity`], least specific first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathRank {
    Any,
    Regex,
    /// A prefix; a longer one (in bytes, after normalization) is more
    /// specific.
    Prefix {
        len: usize,
    },
    Exact,
}
