//! Network addresses written in the config file: `host:port` pairs, CIDR
//! ranges, host names and route host patterns.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Expected form of a listen address or endpoint, for error messages.
pub const HOST_PORT_FORM: &str =
    "host:port, such as \"127.0.0.1:8080\", \"[::1]:8080\" or \"api.internal:9001\"";
/// Expected form of an address range, for error messages.
pub const CIDR_FORM: &str =
    "an IP address or CIDR range, such as \"10.0.0.0/8\", \"192.168.1.7\" or \"::1/128\"";
/// Expected form of a route host pattern, for error messages.
pub const HOST_PATTERN_FORM: &str =
    "an exact host name such as \"api.example.com\" or a wildcard such as \"*.example.com\"";

/// Reason an address did not parse, with a corrected value when one can be guessed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AddressError {
    pub reason: String,
    /// The value rewritten in the expected form, when the mistake is clear.
    pub suggestion: Option<String>,
}

impl AddressError {
    fn new(reason: impl Into<String>) -> Self {
        AddressError {
            reason: reason.into(),
            suggestion: None,
        }
    }

    fn suggest(mut self, suggestion: String) -> Self {
        self.suggestion = Some(suggestion);
        self
    }
}

/// The host part of a `host:port` address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, resolved when the address is used.
    Name(String),
}

/// A `host:port` address: `0.0.0.0:8080`, `[::1]:8080` or `api.internal:9001`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = AddressError;

    /// Parses a `host:port` address. Port 0 is accepted because a listener
    /// on port 0 gets a port from the system. [`HostPort::parse_endpoint`]
    /// parses destinations, which need a port.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(AddressError::new("the address is empty"));
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            let error =
                AddressError::new(format!("`{scheme}://` is not part of a host:port address"));
            return Err(error.suggest(rest.trim_end_matches('/').to_string()));
        }
        if text.trim() != text {
            return Err(AddressError::new("the address has spaces around it")
                .suggest(text.trim().to_string()));
        }

        let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
            let (inside, after) = bracketed.split_once(']').ok_or_else(|| {
                AddressError::new("`[` opens an IPv6 address that `]` never closes")
            })?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| AddressError::new(format!("`{inside}` is not an IPv6 address")))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| AddressError::new("the port is missing"))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(missing_port_or_host(text));
            };
            if host.contains(':') {
                let error = AddressError::new("an IPv6 address needs brackets around it");
                return Err(match host.parse::<Ipv6Addr>() {
                    Ok(_) => error.suggest(format!("[{host}]:{port}")),
                    Err(_) => error,
                });
            }
            if host.is_empty() {
                return Err(
                    AddressError::new("the host is missing").suggest(format!("0.0.0.0:{port}"))
                );
            }
            (parse_host(host)?, port)
        };

        let port = port.parse::<u16>().map_err(|_| {
            AddressError::new(format!("port `{port}` is not a number from 0 to 65535"))
        })?;
        Ok(HostPort { host, port })
    }
}

fn missing_port_or_host(text: &str) -> AddressError {
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return AddressError::new("the host is missing").suggest(format!("0.0.0.0:{text}"));
    }
    if text.parse::<Ipv6Addr>().is_ok() {
        return AddressError::new(
            "the port is missing, and an IPv6 address needs brackets around it",
        );
    }
    AddressError::new("the port is missing")
}

fn parse_host(host: &str) -> Result<Host, AddressError> {
    if host
        .bytes()
        .all(|byte| byte.is_ascii_digit() || byte == b'.')
    {
        return host
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| AddressError::new(format!("`{host}` is not an IPv4 address")));
    }
    check_host_name(host).map_err(AddressError::new)?;
    Ok(Host::Name(host.to_string()))
}

impl HostPort {
    /// Parses the address of an upstream endpoint, which needs a port from 1
    /// to 65535.
    pub fn parse_endpoint(text: &str) -> Result<HostPort, AddressError> {
        let address: HostPort = text.parse()?;
        if address.port == 0 {
            return Err(AddressError::new("port 0 cannot be connected to"));
        }
        Ok(address)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// Checks that `name` is a DNS host name: dot-separated labels of ASCII
/// letters, digits, `-` and `_`, each 1 to 63 characters long and not
/// starting or ending with `-`, at most 253 characters in all. One trailing
/// dot (a fully qualified name) is allowed.
pub fn check_host_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("the host name is empty".to_string());
    }
    if name.len() > 253 {
        return Err("the host name is longer than 253 characters".to_string());
    }
    if !name.is_ascii() {
        return Err(format!(
            "`{name}` has non-ASCII characters (write an internationalized name in its `xn--` form)"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("`{name}` has an empty label between two dots"));
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("`{bad}` is not allowed in a host name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
    }
    Ok(())
}

/// Checks a route host pattern: an exact host name, an IP address, or a host
/// name after a single leading `*.` wildcard.
pub fn check_host_pattern(pattern: &str) -> Result<(), AddressError> {
    if pattern == "*" {
        return Err(AddressError::new(
            "a lone `*` is not a host pattern (leave `host` out to match every host)",
        ));
    }
    if let Some(bracketed) = pattern.strip_prefix('[') {
        let inside = bracketed.strip_suffix(']').ok_or_else(|| {
            AddressError::new("a bracketed IPv6 address must end with `]` and carry no port")
        })?;
        inside
            .parse::<Ipv6Addr>()
            .map_err(|_| AddressError::new(format!("`{inside}` is not an IPv6 address")))?;
        return Ok(());
    }
    if let Some((host, port)) = pattern.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|byte| byte.is_ascii_digit()) && !host.contains(':')
        {
            let error = AddressError::new(
                "host patterns carry no port, because the port is ignored when matching",
            );
            return Err(error.suggest(host.to_string()));
        }
        return Err(AddressError::new("`:` is not allowed in a host pattern"));
    }
    let (wildcard, name) = match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    if name.contains('*') {
        return Err(AddressError::new(
            "only a single leading `*.` wildcard is allowed, such as \"*.example.com\"",
        ));
    }
    if wildcard && name.parse::<Ipv4Addr>().is_ok() {
        return Err(AddressError::new("a wildcard cannot precede an IP address"));
    }
    parse_host(name).map(|_| ())
}

/// An IP address range: a network address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Returns the range's first address; host bits written in the config
    /// (`10.1.2.3/8`) are cleared.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Returns whether `address` lies in the range. An IPv4-mapped IPv6
    /// address (`::ffff:10.0.0.1`) and the IPv4 address it maps are treated
    /// as the same address, because a dual-stack socket reports either.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                mask_v4(u32::from(address), self.prefix_len) == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                mask_v6(u128::from(address), self.prefix_len) == u128::from(network)
                    || address
                        .to_ipv4_mapped()
                        .is_some_and(|mapped| self.contains(IpAddr::V4(mapped)))
            }
            (IpAddr::V4(_), IpAddr::V6(address)) => address
                .to_ipv4_mapped()
                .is_some_and(|mapped| self.contains(IpAddr::V4(mapped))),
            (IpAddr::V6(network), IpAddr::V4(address)) => {
                let mapped = address.to_ipv6_mapped();
                mask_v6(u128::from(mapped), self.prefix_len) == u128::from(network)
            }
        }
    }
}

fn mask_v4(bits: u32, prefix_len: u8) -> u32 {
    bits.checked_shr(32 - u32::from(prefix_len))
        .and_then(|kept| kept.checked_shl(32 - u32::from(prefix_len)))
        .unwrap_or(0)
}

fn mask_v6(bits: u128, prefix_len: u8) -> u128 {
    bits.checked_shr(128 - u32::from(prefix_len))
        .and_then(|kept| kept.checked_shl(128 - u32::from(prefix_len)))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = AddressError;

    /// Parses `10.0.0.0/8`, `::1/128`, or a single address, which stands for
    /// a range of one.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| {
            let error = AddressError::new(format!("`{address}` is not an IP address"));
            match address
                .strip_prefix('[')
                .and_then(|inner| inner.strip_suffix(']'))
            {
                Some(inner) if inner.parse::<Ipv6Addr>().is_ok() => {
                    let prefix = prefix
                        .map(|prefix| format!("/{prefix}"))
                        .unwrap_or_default();
                    error.suggest(format!("{inner}{prefix}"))
                }
                _ => error,
            }
        })?;
        let max_len: u8 = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max_len,
            Some(prefix) => {
                let is_number =
                    !prefix.is_empty() && prefix.bytes().all(|byte| byte.is_ascii_digit());
                let prefix_len = if is_number {
                    prefix.parse::<u8>().ok()
                } else {
                    None
                };
                match prefix_len {
                    Some(prefix_len) if prefix_len <= max_len => prefix_len,
                    _ => {
                        return Err(AddressError::new(format!(
                            "prefix length `{prefix}` is not a number from 0 to {max_len}"
                        )))
                    }
                }
            }
        };
        let network = match address {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(v4), prefix_len))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(v6), prefix_len))),
        };
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_port(text: &str) -> Result<HostPort, AddressError> {
        text.parse()
    }

    #[test]
    fn host_port_accepts_ip_and_names() {
        assert_eq!(
            host_port("0.0.0.0:8080").unwrap().to_string(),
            "0.0.0.0:8080"
        );
        assert_eq!(host_port("[::1]:8080").unwrap().to_string(), "[::1]:8080");
        assert_eq!(host_port("api.internal:9001").unwrap().port, 9001);
        assert_eq!(host_port("localhost:0").unwrap().port, 0);
        assert_eq!(host_port("127.0.0.1:65535").unwrap().port, 65535);
    }

    #[test]
    fn host_port_rejects_with_suggestion() {
        let error = host_port("8080").unwrap_err();
        assert_eq!(error.reason, "the host is missing");
        assert_eq!(error.suggestion.as_deref(), Some("0.0.0.0:8080"));

        let error = host_port("::1:8080").unwrap_err();
        assert_eq!(error.reason, "an IPv6 address needs brackets around it");

        let error = host_port("http://127.0.0.1:9001/").unwrap_err();
        assert_eq!(error.suggestion.as_deref(), Some("127.0.0.1:9001"));

        let error = host_port(":8080").unwrap_err();
        assert_eq!(error.suggestion.as_deref(), Some("0.0.0.0:8080"));
    }

    #[test]
    fn host_port_rejects_bad_parts() {
        assert!(host_port("127.0.0.1:65536").is_err());
        assert!(host_port("127.0.0.1:http").is_err());
        assert!(host_port("256.0.0.1:80").is_err());
        assert!(host_port("[::1]8080").is_err());
        assert!(host_port("[::zz]:8080").is_err());
        assert!(host_port("bad host:80").is_err());
        assert!(host_port("-bad.example:80").is_err());
        assert!(host_port("").is_err());
        assert!(HostPort::parse_endpoint("127.0.0.1:0").is_err());
    }

    #[test]
    fn host_names() {
        assert!(check_host_name("api.example.com").is_ok());
        assert!(check_host_name("svc.cluster.local.").is_ok());
        assert!(check_host_name("demo_upstream").is_ok());
        assert!(check_host_name("a..b").is_err());
        assert!(check_host_name("bücher.example").is_err());
        assert!(check_host_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn host_patterns() {
        assert!(check_host_pattern("api.example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("127.0.0.1").is_ok());
        assert!(check_host_pattern("[::1]").is_ok());
        assert!(check_host_pattern("*").is_err());
        assert!(check_host_pattern("api.*.com").is_err());
        assert!(check_host_pattern("*api.example.com").is_err());
        assert!(check_host_pattern("*.*.example.com").is_err());
        let error = check_host_pattern("api.example.com:8080").unwrap_err();
        assert_eq!(error.suggestion.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn cidr_parses_and_contains() {
        let range: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(range.contains("10.200.1.1".parse().unwrap()));
        assert!(!range.contains("11.0.0.1".parse().unwrap()));
        assert!(range.contains("::ffff:10.0.0.1".parse().unwrap()));

        let mapped: Cidr = "::ffff:0.0.0.0/96".parse().unwrap();
        assert!(mapped.contains("10.0.0.1".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.0.0.1".parse().unwrap()));

        let single: Cidr = "192.168.1.7".parse().unwrap();
        assert_eq!(single.to_string(), "192.168.1.7/32");

        let loopback: Cidr = "::1/128".parse().unwrap();
        assert!(loopback.contains("::1".parse().unwrap()));
        assert!(!loopback.contains("127.0.0.1".parse().unwrap()));

        let everything: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("203.0.113.9".parse().unwrap()));

        let host_bits: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(host_bits.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn cidr_rejects_bad_ranges() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
        assert!("localhost".parse::<Cidr>().is_err());
        let error = "[::1]/128".parse::<Cidr>().unwrap_err();
        assert_eq!(error.suggestion.as_deref(), Some("::1/128"));
    }
}
