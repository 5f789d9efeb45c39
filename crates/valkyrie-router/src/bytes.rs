//! Byte searches and comparisons for the short strings a lookup handles:
//! host names, paths and their segments, mostly under 64 bytes.
//!
//! `memchr` and `memcmp` pay off on long inputs, but for a 20-byte host
//! the call, the CPU feature dispatch and the vector setup cost more than
//! the search. These functions read eight bytes at a time with plain
//! integer operations, inline, and hand inputs longer than
//! [`LONG_INPUT`] bytes to `memchr`.

/// Inputs longer than this go to `memchr`.
const LONG_INPUT: usize = 64;

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Reads 8 bytes at `at` as a little-endian word, so that the first byte
/// is the lowest.
#[inline(always)]
fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Returns a word with the high bit set in each byte of `word` that
/// equals `needle`, and possibly in bytes above the first such byte, but
/// never below it. So the lowest set bit marks the first match.
#[inline(always)]
fn matches(word: u64, needle: u8) -> u64 {
    let zeroed = word ^ (ONES * u64::from(needle));
    zeroed.wrapping_sub(ONES) & !zeroed & HIGH_BITS
}

/// Returns the position of the first `needle` in `haystack`.
#[inline]
pub(crate) fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    let len = haystack.len();
    if len > LONG_INPUT {
        return memchr::memchr(needle, haystack);
    }
    if len < 8 {
        return haystack.iter().position(|&byte| byte == needle);
    }
    let mut at = 0;
    while at + 8 <= len {
        let found = matches(word(haystack, at), needle);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    if at < len {
        // The last 8 bytes overlap bytes already searched, which hold no
        // match, so the first match in them is at `at` or later.
        let start = len - 8;
        let found = matches(word(haystack, start), needle);
        if found != 0 {
            return Some(start + found.trailing_zeros() as usize / 8);
        }
    }
    None
}

/// Returns true if `haystack` contains `first` or `second`.
#[inline]
pub(crate) fn contains_either(first: u8, second: u8, haystack: &[u8]) -> bool {
    let len = haystack.len();
    if len > LONG_INPUT {
        return memchr::memchr2(first, second, haystack).is_some();
    }
    if len < 8 {
        return haystack.iter().any(|&byte| byte == first || byte == second);
    }
    let mut found = 0;
    let mut at = 0;
    while at + 8 <= len {
        let bytes = word(haystack, at);
        found |= matches(bytes, first) | matches(bytes, second);
        at += 8;
    }
    let last = word(haystack, len - 8);
    found |= matches(last, first) | matches(last, second);
    found != 0
}

/// Returns true if `a` and `b` are equal. Inputs of up to 32 bytes are
/// compared as overlapping words without a call to `memcmp`.
#[inline(always)]
pub(crate) fn equal(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    match len {
        0..=3 => a == b,
        4..=7 => {
            let read = |bytes: &[u8], at: usize| {
                u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
            };
            (read(a, 0) ^ read(b, 0)) | (read(a, len - 4) ^ read(b, len - 4)) == 0
        }
        8..=16 => (word(a, 0) ^ word(b, 0)) | (word(a, len - 8) ^ word(b, len - 8)) == 0,
        17..=32 => {
            let head = (word(a, 0) ^ word(b, 0)) | (word(a, 8) ^ word(b, 8));
            let tail =
                (word(a, len - 16) ^ word(b, len - 16)) | (word(a, len - 8) ^ word(b, len - 8));
            head | tail == 0
        }
        _ => a == b,
    }
}

/// Returns true if `bytes` starts with `prefix`.
#[inline(always)]
pub(crate) fn starts_with(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && equal(&bytes[..prefix.len()], prefix)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Byte strings over a few values, so that matches and near misses
    /// are common, up to past the `memchr` threshold.
    fn haystack() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(alphabet(), 0..80)
    }

    /// The haystack's bytes: ASCII, high-bit and zero bytes.
    fn alphabet() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(b'a'),
            Just(b'/'),
            Just(b'.'),
            Just(0x80),
            Just(0xff),
            Just(0)
        ]
    }

    /// A byte of the alphabet, or one next to `/` that never occurs.
    fn needle() -> impl Strategy<Value = u8> {
        prop_oneof![6 => alphabet(), 1 => Just(b'/' + 1)]
    }

    proptest! {
        #[test]
        fn find_byte_agrees(haystack in haystack(), needle in needle()) {
            prop_assert_eq!(
                find_byte(needle, &haystack),
                haystack.iter().position(|&byte| byte == needle)
            );
        }

        #[test]
        fn contains_either_agrees(haystack in haystack(), first in needle(), second in needle()) {
            prop_assert_eq!(
                contains_either(first, second, &haystack),
                haystack.iter().any(|&byte| byte == first || byte == second)
            );
        }

        #[test]
        fn equal_agrees(a in haystack(), flip in any::<prop::sample::Index>(), same in any::<bool>()) {
            let mut b = a.clone();
            if !same && !b.is_empty() {
                let at = flip.index(b.len());
                b[at] ^= 0x01;
            }
            prop_assert_eq!(equal(&a, &b), a == b);
            prop_assert_eq!(starts_with(&a, &b[..b.len() / 2]), a.starts_with(&b[..b.len() / 2]));
            prop_assert_eq!(starts_with(&b[..b.len() / 2], &a), b[..b.len() / 2].starts_with(&a));
        }
    }
}
