//! Request path and host normalization, applied before any matching.

use std::borrow::Cow;

use crate::bytes::{contains_either, find_byte};

/// Normalizes a request path for matching.
///
/// The steps, in order:
///
/// 1. An empty path becomes `/`.
/// 2. Percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986
///    §2.3) are decoded, and the hex digits of every other valid escape are
///    uppercased (`%2f` becomes `%2F`). Invalid escapes such as `%zz` stay as
///    they are.
/// 3. Dot segments are removed as RFC 3986 §5.2.4 describes, so `/a/../b`
///    becomes `/b` and `/a/%2E%2E/b` becomes `/b` as well.
///
/// Nothing else changes: repeated slashes, `%2F` and non-ASCII text are kept.
/// The result borrows the input when no step changes it, which is the common
/// case, and normalizing a normalized path returns it unchanged.
///
/// ```
/// use valkyrie_router::normalize_path;
///
/// assert_eq!(normalize_path("/a/%2E%2E/admin"), "/admin");
/// assert_eq!(normalize_path("/a/../admin"), "/admin");
/// assert_eq!(normalize_path("/%7euser/%2f"), "/~user/%2F");
/// assert_eq!(normalize_path("/a//b/"), "/a//b/");
/// ```
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    if is_normalized(path) {
        return Cow::Borrowed(path);
    }

    let decoded = normalize_escapes(path);
    let mut output = remove_dot_segments(&decoded);
    if output.is_empty() {
        output.push('/');
    }
    Cow::Owned(output)
}

/// Returns true when `normalize_path` would return `path` unchanged.
fn is_normalized(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Only an escape or a dot segment changes a path, and both need one of
    // these bytes, which most paths lack.
    if !contains_either(b'%', b'.', bytes) {
        return true;
    }
    scan_is_normalized(bytes)
}

/// Checks every escape and segment of a path for what `normalize_path`
/// would change.
fn scan_is_normalized(bytes: &[u8]) -> bool {
    let mut segment_start = 0;

    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'%' => {
                if let Some((high, low)) = escape_at(bytes, i) {
                    let decoded = (hex_value(high) << 4) | hex_value(low);
                    if is_unreserved(decoded)
                        || high.is_ascii_lowercase()
                        || low.is_ascii_lowercase()
                    {
                        return false;
                    }
                }
            }
            b'/' => {
                if is_dot_segment(&bytes[segment_start..i]) {
                    return false;
                }
                segment_start = i + 1;
            }
            _ => {}
        }
    }
    !is_dot_segment(&bytes[segment_start..])
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// Returns the two hex digits of a valid escape starting at `bytes[i] == b'%'`.
fn escape_at(bytes: &[u8], i: usize) -> Option<(u8, u8)> {
    let high = *bytes.get(i + 1)?;
    let low = *bytes.get(i + 2)?;
    (high.is_ascii_hexdigit() && low.is_ascii_hexdigit()).then_some((high, low))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// Unreserved characters of RFC 3986 §2.3.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters and uppercases the hex digits of
/// the other escapes.
fn normalize_escapes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut output = String::with_capacity(path.len());
    let mut copied_up_to = 0;
    let mut i = 0;

    while i < bytes.len() {
        let Some((high, low)) = (bytes[i] == b'%').then(|| escape_at(bytes, i)).flatten() else {
            i += 1;
            continue;
        };
        // Slicing at `i` is safe: `%` is ASCII, so it starts a character.
        output.push_str(&path[copied_up_to..i]);

        let decoded = (hex_value(high) << 4) | hex_value(low);
        if is_unreserved(decoded) {
            output.push(char::from(decoded));
        } else {
            output.push('%');
            output.push(char::from(high.to_ascii_uppercase()));
            output.push(char::from(low.to_ascii_uppercase()));
        }
        i += 3;
        copied_up_to = i;
    }
    output.push_str(&path[copied_up_to..]);
    output
}

/// Removes dot segments with the `remove_dot_segments` algorithm of
/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());

    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            // Rule A: a leading `../` or `./` of a relative path is dropped.
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            // Rule B: `/./` and a final `/.` become `/`.
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            // Rule C: `/../` and a final `/..` become `/` and drop the last
            // output segment.
            input = &input[3..];
            pop_last_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            pop_last_segment(&mut output);
        } else if input == "." || input == ".." {
            // Rule D.
            input = "";
        } else {
            // Rule E: move the first segment, with its leading `/`, to the
            // output.
            let search_from = usize::from(input.starts_with('/'));
            let end = input[search_from..]
                .find('/')
                .map_or(input.len(), |offset| search_from + offset);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

fn pop_last_segment(output: &mut String) {
    let cut = output.rfind('/').unwrap_or(0);
    output.truncate(cut);
}

/// Normalizes a path written in the config (`path_exact`, `path_prefix`,
/// `strip_prefix`) so it compares with normalized request paths. The error
/// completes a sentence that starts with the key name.
///
/// The path must start with `/` and contain no dot segment, because a
/// normalized request path never has one. In a prefix the last segment may be
/// `.` or `..`, since it can be the start of a longer segment such as
/// `.well-known`.
pub(crate) fn normalize_config_path(path: &str, is_prefix: bool) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }

    let normalized = normalize_escapes(path);
    let mut segments: Vec<&str> = normalized.split('/').collect();
    if is_prefix {
        segments.pop();
    }
    if let Some(dots) = segments.iter().find(|s| is_dot_segment(s.as_bytes())) {
        return Err(format!(
            "`{path}` contains the dot segment `{dots}`, which normalized request paths never contain"
        ));
    }
    Ok(normalized)
}

/// Reduces a host to the form that routes compare: the port and one trailing
/// dot removed, ASCII letters lowercased. Keeps the brackets of an IPv6
/// literal. Allocates only when the host contains uppercase letters.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = strip_trailing_dot(strip_port(host));
    if has_uppercase(host) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Maximum length of a request host that `with_host_key` lowercases on the
/// stack. A DNS name has at most 253 characters.
const HOST_BUFFER_LEN: usize = 256;

/// Calls `f` with the normalized form of a request host, lowercasing into a
/// stack buffer so that the lookup does not allocate.
pub(crate) fn with_host_key<R>(host: &str, f: impl FnOnce(&str) -> R) -> R {
    let host = strip_trailing_dot(strip_port(host));
    if !has_uppercase(host) {
        return f(host);
    }
    if host.len() > HOST_BUFFER_LEN {
        return f(&host.to_ascii_lowercase());
    }

    let mut buffer = [0u8; HOST_BUFFER_LEN];
    let lowered = &mut buffer[..host.len()];
    lowered.copy_from_slice(host.as_bytes());
    lowered.make_ascii_lowercase();
    // Lowercasing ASCII bytes keeps the UTF-8 of the input valid.
    let lowered = std::str::from_utf8(lowered).expect("ASCII lowercasing keeps UTF-8 valid");
    f(lowered)
}

/// Returns true if `host` contains an ASCII uppercase letter. Tests eight
/// bytes at a time: a request host is usually 10 to 40 bytes, and a byte
/// loop with an early exit was a sixth of a batched lookup.
fn has_uppercase(host: &str) -> bool {
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Added to the low 7 bits of a byte, these set its high bit exactly
    // when the byte is at least `A` (0x41), respectively above `Z` (0x5a),
    // and never carry into the next byte.
    const FROM_A: u64 = u64::from_ne_bytes([0x80 - b'A'; 8]);
    const PAST_Z: u64 = u64::from_ne_bytes([0x80 - b'Z' - 1; 8]);
    let upper = |word: u64| {
        let low = word & LOW7;
        // Bytes of 0x80 and above are not ASCII, so `!word` drops them.
        (low + FROM_A) & !(low + PAST_Z) & !word & HIGH
    };
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
    let bytes = host.as_bytes();
    if bytes.len() < 8 {
        return bytes.iter().any(u8::is_ascii_uppercase);
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut found = 0;
    for chunk in &mut chunks {
        found |= upper(word(chunk));
    }
    // The last 8 bytes cover the remainder. Copying the remainder into a
    // zeroed word instead made the CPU wait for the copy to reach memory.
    found |= upper(word(&bytes[bytes.len() - 8..]));
    found != 0
}

/// Removes a `:port` suffix. An IPv6 literal keeps its brackets
/// (`[::1]:8080` becomes `[::1]`); a bare IPv6 address, which has more than
/// one colon, is left alone.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    let bytes = host.as_bytes();
    match find_byte(b':', bytes) {
        Some(colon) if find_byte(b':', &bytes[colon + 1..]).is_none() => &host[..colon],
        _ => host,
    }
}

fn strip_trailing_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn fast_normalized_check_agrees(path in "[/a.%4eE1]{0,12}") {
            prop_assert_eq!(is_normalized(&path), scan_is_normalized(path.as_bytes()));
        }

        #[test]
        fn uppercase_check_agrees(host in "[@AMZ\\[`amz{.\u{e9}\u{c3}\u{da}]{0,40}") {
            prop_assert_eq!(
                has_uppercase(&host),
                host.bytes().any(|byte| byte.is_ascii_uppercase())
            );
        }

        #[test]
        fn strip_port_matches_split(host in "[a:1\\[\\]]{0,8}") {
            let expected = if host.starts_with('[') {
                host.find(']').map_or(host.as_str(), |end| &host[..=end])
            } else {
                match host.split_once(':') {
                    Some((name, port)) if !port.contains(':') => name,
                    _ => &host,
                }
            };
            prop_assert_eq!(strip_port(&host), expected);
        }
    }

    #[test]
    fn normalize_path_cases() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/%2E%2E/admin", "/admin"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/a/.%2E/admin", "/admin"),
            ("/..", "/"),
            ("/../a", "/a"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/../../../c", "/c"),
            ("/.../a", "/.../a"),
            ("/a..b/.c", "/a..b/.c"),
            ("/%41%62%30%2D%5F%7E", "/Ab0-_~"),
            ("/%2f%3a%c3%a9", "/%2F%3A%C3%A9"),
            ("/%zz/%4/%", "/%zz/%4/%"),
            ("/a//b", "/a//b"),
            ("/a/%2F../b", "/a/%2F../b"),
            ("/caf\u{e9}/../x", "/x"),
            (".", "/"),
            ("a/../b", "/b"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_path(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn normalize_path_borrows_clean_paths() {
        for path in ["/", "/a/b", "/a//b/", "/%2F", "/.well-known/x", "/a..b"] {
            assert!(
                matches!(normalize_path(path), Cow::Borrowed(_)),
                "path {path:?} was copied"
            );
        }
    }

    #[test]
    fn normalize_host_cases() {
        let cases = [
            ("Example.COM", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com.", "example.com"),
            ("example.com.:443", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("::1", "::1"),
            ("127.0.0.1:80", "127.0.0.1"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_host(input), expected, "input {input:?}");
            assert_eq!(
                with_host_key(input, str::to_owned),
                expected,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn host_key_handles_long_hosts() {
        let long = "A".repeat(HOST_BUFFER_LEN + 10);
        assert_eq!(
            with_host_key(&long, str::to_owned),
            "a".repeat(HOST_BUFFER_LEN + 10)
        );
    }
}
