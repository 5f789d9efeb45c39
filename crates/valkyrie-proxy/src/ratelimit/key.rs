//! Rate limit keys (the client address, the route or a header value) and
//! the client address behind trusted proxies.

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName};

use crate::headers::X_FORWARDED_FOR;
use crate::net::CidrSet;

/// The `[security.rate_limiting] key` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// The client address, taken from `X-Forwarded-For` behind trusted proxies.
    ClientIp,
    /// The name of the matched route: one bucket per route.
    Route,
    /// The value of a request header. Requests without it share one bucket.
    Header(HeaderName),
}

impl KeyKind {
    /// Parses `client_ip`, `route` or `header:NAME`.
    pub fn parse(text: &str) -> Result<KeyKind, String> {
        match text.trim() {
            "client_ip" => Ok(KeyKind::ClientIp),
            "route" => Ok(KeyKind::Route),
            other => {
                let name = other.strip_prefix("header:").ok_or_else(|| {
                    format!("invalid rate limit key `{text}`: expected `client_ip`, `route` or `header:NAME`")
                })?;
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map(KeyKind::Header)
                    .map_err(|_| {
                        format!(
                            "invalid rate limit key `{text}`: `{name}` is not a valid header name"
                        )
                    })
            }
        }
    }

    /// Returns the key of one request.
    pub fn extract<'a>(
        &self,
        route: &'a str,
        headers: &'a HeaderMap,
        peer: IpAddr,
        trusted_proxies: &CidrSet,
    ) -> LimitKey<'a> {
        match self {
            KeyKind::ClientIp => LimitKey::Ip(client_address(peer, headers, trusted_proxies)),
            KeyKind::Route => LimitKey::Route(route),
            KeyKind::Header(name) => match headers.get(name) {
                Some(value) => LimitKey::Header(value.as_bytes()),
                None => LimitKey::Missing,
            },
        }
    }
}

/// The value a request is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey<'a> {
    Ip(IpAddr),
    Route(&'a str),
    Header(&'a [u8]),
    /// The key header is absent.
    Missing,
}

/// Header values longer than this are replaced by a hash in Redis keys.
const MAX_RAW_KEY_BYTES: usize = 128;

impl LimitKey<'_> {
    /// Hashes the key for the in-process tables. The hasher is seeded per
    /// process, so clients cannot pick colliding keys.
    pub fn hash_with(&self, hasher: &impl BuildHasher) -> u64 {
        hasher.hash_one(self)
    }

    /// Appends the key to a Redis key. Every replica writes the same bytes
    /// for the same key, so all of them share one bucket.
    pub fn append_redis_key(&self, out: &mut Vec<u8>) {
        match self {
            LimitKey::Ip(address) => {
                out.extend_from_slice(b"ip:");
                out.extend_from_slice(address.to_string().as_bytes());
            }
            LimitKey::Route(name) => {
                out.extend_from_slice(b"route:");
                out.extend_from_slice(name.as_bytes());
            }
            LimitKey::Header(value) if value.len() <= MAX_RAW_KEY_BYTES => {
                out.extend_from_slice(b"h:");
                out.extend_from_slice(value);
            }
            LimitKey::Header(value) => {
                // A fixed hash keeps the key the same on every replica.
                out.extend_from_slice(
                    format!("hf:{:016x}:{}", fnv1a(value), value.len()).as_bytes(),
                );
            }
            LimitKey::Missing => out.extend_from_slice(b"missing"),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Returns the address of the client a request comes from.
///
/// A peer outside `trusted_proxies` is the client. Behind a trusted peer, the
/// `X-Forwarded-For` addresses are read from right to left, skipping trusted
/// proxies, and the first untrusted one is the client. Addresses left of it
/// were written by the client itself and are ignored, so a client cannot
/// pick its own key. When every address is trusted, the left-most one is
/// used; an entry that is not an address ends the walk at the last trusted
/// hop.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &CidrSet) -> IpAddr {
    if trusted_proxies.is_empty() || !trusted_proxies.contains(peer) {
        return peer;
    }
    let mut client = peer;
    // Later header lines were appended by later hops, so they are read first.
    let values = headers.get_all(&X_FORWARDED_FOR).iter().rev();
    for value in values {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Some(address) = parse_forwarded_address(entry) else {
                return client;
            };
            client = address;
            if !trusted_proxies.contains(address) {
                return client;
            }
        }
    }
    client
}

/// Parses one `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally
/// with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
pub fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trusted(ranges: &[&str]) -> CidrSet {
        CidrSet::parse(ranges.iter().copied()).unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&X_FORWARDED_FOR, value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn key_kinds_parse() {
        assert_eq!(KeyKind::parse("client_ip").unwrap(), KeyKind::ClientIp);
        assert_eq!(KeyKind::parse("route").unwrap(), KeyKind::Route);
        assert_eq!(
            KeyKind::parse("header:X-Api-Key").unwrap(),
            KeyKind::Header(HeaderName::from_static("x-api-key"))
        );
        assert!(KeyKind::parse("header:bad name").is_err());
        assert!(KeyKind::parse("cookie").is_err());
    }

    #[test]
    fn untrusted_peer_is_client() {
        let headers = forwarded(&["198.51.100.1"]);
        let client = client_address(ip("203.0.113.9"), &headers, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted() {
        let headers = forwarded(&["6.6.6.6, 198.51.100.1, 10.0.0.2"]);
        let client = client_address(ip("10.0.0.1"), &headers, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("198.51.100.1"));
    }

    #[test]
    fn later_header_lines_read_first() {
        let headers = forwarded(&["6.6.6.6", "198.51.100.1"]);
        let client = client_address(ip("10.0.0.1"), &headers, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("198.51.100.1"));
    }

    #[test]
    fn all_trusted_uses_leftmost() {
        let headers = forwarded(&["10.0.0.3, 10.0.0.2"]);
        let client = client_address(ip("10.0.0.1"), &headers, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("10.0.0.3"));
    }

    #[test]
    fn invalid_entry_stops_at_last_trusted_hop() {
        let headers = forwarded(&["198.51.100.1, unknown, 10.0.0.2"]);
        let client = client_address(ip("10.0.0.1"), &headers, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("10.0.0.2"));
    }

    #[test]
    fn missing_header_keeps_peer() {
        let client = client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_entries_with_ports_parse() {
        assert_eq!(
            parse_forwarded_address(" 192.0.2.1 "),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            parse_forwarded_address("192.0.2.1:4711"),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            parse_forwarded_address("[2001:db8::1]:4711"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            parse_forwarded_address("[2001:db8::1]"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            parse_forwarded_address("2001:db8::1"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_forwarded_address("unknown"), None);
        assert_eq!(parse_forwarded_address(""), None);
    }

    #[test]
    fn redis_keys_name_kind_and_value() {
        let mut out = Vec::new();
        LimitKey::Ip(ip("192.0.2.1")).append_redis_key(&mut out);
        assert_eq!(out, b"ip:192.0.2.1");
        out.clear();
        LimitKey::Header(b"tenant-a").append_redis_key(&mut out);
        assert_eq!(out, b"h:tenant-a");
        out.clear();
        LimitKey::Missing.append_redis_key(&mut out);
        assert_eq!(out, b"missing");
        out.clear();
        let long = vec![b'a'; 500];
        LimitKey::Header(&long).append_redis_key(&mut out);
        assert!(out.starts_with(b"hf:"));
        assert!(out.len() < 64);
    }

    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u16; 8]>().prop_map(IpAddr::from),
        ]
    }

    proptest! {
        /// Whatever a client writes left of the untrusted hop never becomes its key.
        #[test]
        fn client_cannot_choose_its_key(
            forged in proptest::collection::vec("[ -~]{0,20}", 0..4),
            client in any::<[u8; 4]>(),
            proxies in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let client = IpAddr::from([198, 51, 100, client[3]]);
            let mut entries: Vec<String> = forged.iter().map(|text| text.replace(',', " ")).collect();
            entries.push(client.to_string());
            entries.extend(proxies.iter().map(|last| format!("10.0.0.{last}")));
            let mut headers = HeaderMap::new();
            if let Ok(value) = entries.join(", ").parse() {
                headers.insert(&X_FORWARDED_FOR, value);
                let found = client_address(ip("10.9.9.9"), &headers, &trusted(&["10.0.0.0/8"]));
                prop_assert_eq!(found, client);
            }
        }

        #[test]
        fn formatted_addresses_parse_back(address in address(), port in any::<u16>()) {
            prop_assert_eq!(parse_forwarded_address(&address.to_string()), Some(address));
            let with_port = SocketAddr::new(address, port).to_string();
            prop_assert_eq!(parse_forwarded_address(&with_port), Some(address));
        }

        #[test]
        fn arbitrary_header_text_never_panics(text in "\\PC{0,64}", peer in address()) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = text.parse() {
                headers.insert(&X_FORWARDED_FOR, value);
            }
            let _ = client_address(peer, &headers, &trusted(&["0.0.0.0/0", "::/0"]));
        }
    }
}
