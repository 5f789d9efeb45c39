//! Header rewriting between the downstream and upstream sides: hop-by-hop
//! removal and the `X-Forwarded-*` and `Via` headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::net::CidrSet;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection and never cross the proxy (RFC 9110 §7.6.1).
fn fixed_hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names. `TE: trailers` is kept because gRPC needs it end to end;
/// any other `TE` value is removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry no hop-by-hop header but `Connection`, so one
    // pass over the names decides which hashed removals are needed.
    let hop_by_hop = fixed_hop_by_hop();
    let mut has_connection = false;
    let mut has_te = false;
    let mut has_other = false;
    for name in headers.keys() {
        if name == header::CONNECTION {
            has_connection = true;
        } else if name == header::TE {
            has_te = true;
        } else if hop_by_hop.contains(&name) {
            has_other = true;
        }
    }
    if has_connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            // `close` and `keep-alive` are the usual values; `keep-alive`
            // as a header is removed below when present.
            .filter(|token| {
                !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive")
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if has_other {
        for name in hop_by_hop.into_iter().skip(1) {
            headers.remove(name);
        }
    }
    // A `Connection` token may have named `TE`.
    if has_te && headers.contains_key(header::TE) {
        let te_is_trailers = headers
            .get(header::TE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("trailers"));
        if !te_is_trailers {
            headers.remove(header::TE);
        }
    }
}

/// Facts about the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    pub peer: IpAddr,
    /// `"http"` or `"https"`.
    pub scheme: &'static str,
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and appends to `Via`. Incoming
/// `X-Forwarded-*` values are kept only when the peer is a trusted proxy;
/// otherwise they are replaced, so a client cannot forge its address.
/// `peer` is [`peer_value`] of `client.peer`, which a connection computes
/// once for all its requests.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client: ClientInfo,
    peer: &HeaderValue,
    host: Option<&str>,
    trusted: &CidrSet,
    via: &HeaderValue,
) {
    let from_trusted_proxy = trusted.contains(client.peer);

    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(existing) if from_trusted_proxy => {
            let mut value = existing.as_bytes().to_vec();
            value.extend_from_slice(b", ");
            value.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&value).ok()
        }
        _ => Some(peer.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }

    if !(from_trusted_proxy && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(client.scheme),
        );
    }

    if !(from_trusted_proxy && headers.contains_key(&X_FORWARDED_HOST)) {
        match host.and_then(|host| HeaderValue::from_str(host).ok()) {
            Some(value) => {
                headers.insert(X_FORWARDED_HOST.clone(), value);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }

    headers.append(header::VIA, via.clone());
}

/// Returns a client address as a header value, for `X-Forwarded-For`.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).expect("an IP address is a valid header value")
}

/// Returns true when the request requests a protocol switch (WebSocket and
/// other `Upgrade` tunnels).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ranges: &[&str]) -> CidrSet {
        CidrSet::parse(ranges.iter().copied()).unwrap()
    }

    #[test]
    fn connection_close_alone_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key(header::CONNECTION));
        assert_eq!(headers.get(header::TE).unwrap(), "trailers");
        assert!(headers.contains_key("x-kept"));
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn te_other_than_trailers_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, "gzip".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert!(headers.is_empty());

        let mut headers = HeaderMap::new();
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert(header::CONNECTION, "te".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn hop_by_hop_removed_with_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::TE, "gzip".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-secret"));
        assert!(!headers.contains_key(header::CONNECTION));
        assert!(!headers.contains_key("keep-alive"));
        assert!(!headers.contains_key(header::TRANSFER_ENCODING));
        assert!(!headers.contains_key(header::TE));
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, "trailers".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers[header::TE], "trailers");
    }

    #[test]
    fn forwarded_for_replaced_from_untrusted_peer() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        headers.insert(&X_FORWARDED_PROTO, "https".parse().unwrap());
        let client = ClientInfo {
            peer: "203.0.113.9".parse().unwrap(),
            scheme: "http",
        };
        let via = HeaderValue::from_static("1.1 valkyrie");
        add_forwarding(
            &mut headers,
            client,
            &peer_value(client.peer),
            Some("a.example"),
            &trusted(&[]),
            &via,
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "a.example");
        assert_eq!(headers[header::VIA], "1.1 valkyrie");
    }

    #[test]
    fn forwarded_for_appended_from_trusted_peer() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, "198.51.100.7".parse().unwrap());
        headers.insert(&X_FORWARDED_PROTO, "https".parse().unwrap());
        let client = ClientInfo {
            peer: "10.1.2.3".parse().unwrap(),
            scheme: "http",
        };
        let via = HeaderValue::from_static("1.1 valkyrie");
        add_forwarding(
            &mut headers,
            client,
            &peer_value(client.peer),
            None,
            &trusted(&["10.0.0.0/8"]),
            &via,
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "198.51.100.7, 10.1.2.3");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn upgrade_detected_only_with_connection_token() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_upgrade_request(&headers));
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade_request(&headers));
    }
}
