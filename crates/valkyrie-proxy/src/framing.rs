//! A strict HTTP/1.1 request framing check that runs on the raw bytes before
//! hyper parses them.
//!
//! hyper's parser accepts a bare LF as a line ending, which RFC 9112 §2.2
//! lets a server reject and which request-smuggling attacks exploit when two
//! hops disagree. This scanner follows the request stream (heads, then
//! bodies by `Content-Length` or chunked framing) and reports the offset of
//! the first byte that breaks the rules: a bare LF in a head or chunk line,
//! or a chunk size that is not hexadecimal. The connection wrapper then
//! hands hyper an invalid byte at that point, so hyper answers 400 and
//! closes the connection before any of that request reaches an upstream.

/// Longest head line or chunk line kept for inspection; longer lines are
/// still scanned for line endings but not parsed.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Inside a request head, `line` holding the current line.
    Head,
    /// Inside a body with this many bytes left.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Inside chunk data with this many bytes left, then CRLF.
    ChunkData(u64),
    /// Expecting the CR (then LF) that ends chunk data.
    ChunkDataEnd { seen_cr: bool },
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Bytes after a protocol switch or an HTTP/2 preface: no longer HTTP/1.1 requests.
    Passthrough,
}

/// Follows one connection's request stream.
#[derive(Debug)]
pub struct RequestFramer {
    state: State,
    line: Vec<u8>,
    /// Whether the previous byte was CR.
    after_cr: bool,
    /// Lines seen in the current head, counting the request line.
    head_lines: usize,
    content_length: Option<u64>,
    /// Whether the head has a `Transfer-Encoding` header.
    transfer_encoding: bool,
    /// Whether the head has `Content-Length` values that disagree or do not parse.
    bad_length: bool,
    chunked: bool,
    upgrade: bool,
    /// Set once a violation was found; everything after it is rejected.
    failed: bool,
}

impl Default for RequestFramer {
    fn default() -> Self {
        RequestFramer::new()
    }
}

impl RequestFramer {
    pub fn new() -> RequestFramer {
        RequestFramer {
            state: State::Head,
            line: Vec::with_capacity(256),
            after_cr: false,
            head_lines: 0,
            content_length: None,
            transfer_encoding: false,
            bad_length: false,
            chunked: false,
            upgrade: false,
            failed: false,
        }
    }

    /// Scans the next bytes of the stream. When a byte breaks the framing
    /// rules, returns the offset within `bytes` where the offending line
    /// starts (or 0 when it started in an earlier call), so the caller can
    /// cut the stream there.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        if self.failed {
            return Some(0);
        }
        let mut offset = 0;
        let mut line_start = 0;
        while offset < bytes.len() {
            match self.state {
                State::Passthrough => return None,
                State::Body(left) => {
                    let take = left.min((bytes.len() - offset) as u64);
                    offset += take as usize;
                    line_start = offset;
                    self.state = if left == take {
                        State::Head
                    } else {
                        State::Body(left - take)
                    };
                }
                State::ChunkData(left) => {
                    let take = left.min((bytes.len() - offset) as u64);
                    offset += take as usize;
                    line_start = offset;
                    self.state = if left == take {
                        State::ChunkDataEnd { seen_cr: false }
                    } else {
                        State::ChunkData(left - take)
                    };
                }
                State::ChunkDataEnd { seen_cr } => {
                    let byte = bytes[offset];
                    let valid = if seen_cr {
                        byte == b'\n'
                    } else {
                        byte == b'\r'
                    };
                    if !valid {
                        return self.fail(offset);
                    }
                    self.state = if seen_cr {
                        State::ChunkSize
                    } else {
                        State::ChunkDataEnd { seen_cr: true }
                    };
                    offset += 1;
                    line_start = offset;
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    // A CR left over from the previous call must be followed by LF.
                    if self.after_cr && bytes[offset] != b'\n' {
                        return self.fail(line_start);
                    }
                    let rest = &bytes[offset..];
                    let Some(newline) = memchr::memchr(b'\n', rest) else {
                        // No line end yet: keep the partial line and check that
                        // a CR appears only as the last byte, where LF may follow.
                        if let Some(cr) = memchr::memchr(b'\r', rest) {
                            if cr + 1 != rest.len() {
                                return self.fail(line_start);
                            }
                        }
                        self.after_cr = rest.last() == Some(&b'\r');
                        let text = if self.after_cr {
                            &rest[..rest.len() - 1]
                        } else {
                            rest
                        };
                        self.keep(text);
                        return None;
                    };
                    let segment = &rest[..newline];
                    let ends_with_cr = if newline == 0 {
                        self.after_cr
                    } else {
                        segment[newline - 1] == b'\r'
                    };
                    if !ends_with_cr {
                        return self.fail(line_start);
                    }
                    let text = if newline == 0 {
                        segment
                    } else {
                        &segment[..newline - 1]
                    };
                    if memchr::memchr(b'\r', text).is_some() {
                        // A CR inside the line, not followed by LF.
                        return self.fail(line_start);
                    }
                    self.keep(text);
                    self.after_cr = false;
                    if let Err(()) = self.end_line() {
                        return self.fail(line_start);
                    }
                    offset += newline + 1;
                    line_start = offset;
                }
            }
        }
        None
    }

    /// Appends line bytes up to the inspection limit.
    fn keep(&mut self, text: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&text[..text.len().min(room)]);
    }

    fn fail(&mut self, offset: usize) -> Option<usize> {
        self.failed = true;
        Some(offset)
    }

    /// Handles a complete line in a head, chunk-size or trailer state.
    fn end_line(&mut self) -> Result<(), ()> {
        let line = std::mem::take(&mut self.line);
        let result = match self.state {
            State::Head => self.head_line(&line),
            State::ChunkSize => self.chunk_size_line(&line),
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::Head;
                }
                Ok(())
            }
            _ => Ok(()),
        };
        self.line = line;
        self.line.clear();
        result
    }

    fn head_line(&mut self, line: &[u8]) -> Result<(), ()> {
        if line.is_empty() {
            if self.head_lines == 0 {
                // RFC 9112 §2.2: empty lines before a request line are ignored.
                return Ok(());
            }
            // RFC 9112 §6.1 allows a server to reject a request with both
            // headers, and §6.3 requires rejecting unparsable or conflicting
            // lengths; hyper would instead drop Content-Length and go on.
            if self.bad_length || (self.transfer_encoding && self.content_length.is_some()) {
                return Err(());
            }
            self.finish_head();
            return Ok(());
        }
        self.head_lines += 1;
        if self.head_lines == 1 {
            if line.starts_with(b"PRI * HTTP/2.0") || line.starts_with(b"CONNECT ") {
                self.state = State::Passthrough;
            }
            return Ok(());
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // hyper rejects a header line without a colon itself.
            return Ok(());
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            match (self.content_length, length) {
                (_, None) => self.bad_length = true,
                (None, Some(length)) => self.content_length = Some(length),
                (Some(previous), Some(length)) if previous != length => self.bad_length = true,
                _ => {}
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .map(trim)
                .unwrap_or_default();
            self.chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
        Ok(())
    }

    fn finish_head(&mut self) {
        let next = if self.upgrade {
            // After a protocol switch the bytes belong to the new protocol.
            // The handler closes the connection when the upgrade is refused,
            // so no unchecked request follows on it.
            State::Passthrough
        } else if self.chunked {
            State::ChunkSize
        } else {
            match self.content_length {
                Some(length) if length > 0 => State::Body(length),
                _ => State::Head,
            }
        };
        self.state = next;
        self.head_lines = 0;
        self.content_length = None;
        self.transfer_encoding = false;
        self.bad_length = false;
        self.chunked = false;
        self.upgrade = false;
    }

    fn chunk_size_line(&mut self, line: &[u8]) -> Result<(), ()> {
        let size_text = line
            .split(|&b| b == b';')
            .next()
            .map(trim)
            .unwrap_or_default();
        if size_text.is_empty()
            || size_text.len() > 16
            || !size_text.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(());
        }
        let text = std::str::from_utf8(size_text).map_err(|_| ())?;
        let size = u64::from_str_radix(text, 16).map_err(|_| ())?;
        self.state = if size == 0 {
            State::Trailers
        } else {
            State::ChunkData(size)
        };
        Ok(())
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(bytes: &[u8]) -> Option<usize> {
        RequestFramer::new().scan(bytes)
    }

    #[test]
    fn valid_pipeline_passes() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe\nlo\
POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\na\nc\r\n0\r\nX-T: 1\r\n\r\n\
GET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan_all(stream), None);
    }

    #[test]
    fn bare_lf_in_head_rejected_at_line_start() {
        let stream = b"GET / HTTP/1.1\nHost: a\r\n\r\n";
        assert_eq!(scan_all(stream), Some(0));
    }

    #[test]
    fn bare_lf_in_second_request_rejected() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\n\r\n";
        assert_eq!(scan_all(stream), Some(43));
    }

    #[test]
    fn bad_chunk_size_rejected() {
        let stream =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
        assert!(scan_all(stream).is_some());
    }

    #[test]
    fn missing_crlf_after_chunk_data_rejected() {
        let stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n";
        assert_eq!(scan_all(stream), Some(52));
    }

    #[test]
    fn length_with_transfer_encoding_rejected() {
        let stream =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(scan_all(stream), Some(64));
    }

    #[test]
    fn conflicting_lengths_rejected() {
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
        assert!(scan_all(stream).is_some());
        let same = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(scan_all(same), None);
    }

    #[test]
    fn body_bytes_are_not_checked() {
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n\n\n\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_all(stream), None);
    }

    #[test]
    fn http2_preface_passes_through() {
        let stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n\n\x00\x01";
        assert_eq!(scan_all(stream), None);
    }

    #[test]
    fn upgrade_request_passes_through_after_head() {
        let stream =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\n\x81\x05hello";
        assert_eq!(scan_all(stream), None);
    }

    fn request_strategy() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(any::<u8>(), 0..64);
        (body, any::<bool>(), "[a-z]{1,8}").prop_map(|(body, chunked, path)| {
            let mut out = Vec::new();
            if chunked {
                out.extend_from_slice(
                    format!(
                        "POST /{path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                    .as_bytes(),
                );
                for piece in body.chunks(7) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            } else {
                out.extend_from_slice(
                    format!(
                        "POST /{path} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(&body);
            }
            out
        })
    }

    proptest! {
        #[test]
        fn valid_streams_pass_in_any_split(requests in proptest::collection::vec(request_strategy(), 1..5), split in 1usize..50) {
            let stream: Vec<u8> = requests.concat();
            let mut framer = RequestFramer::new();
            for piece in stream.chunks(split) {
                prop_assert_eq!(framer.scan(piece), None);
            }
        }

        #[test]
        fn bare_lf_in_any_head_line_found(requests in proptest::collection::vec(request_strategy(), 1..4), pick in any::<prop::sample::Index>()) {
            // Replace one head CRLF with a bare LF and expect a violation.
            let stream: Vec<u8> = requests.concat();
            let mut framer = RequestFramer::new();
            let mut positions = Vec::new();
            let mut offset = 0;
            for request in &requests {
                let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                for i in 0..head_end - 1 {
                    if request[i] == b'\r' && request[i + 1] == b'\n' {
                        positions.push(offset + i);
                    }
                }
                offset += request.len();
            }
            let at = positions[pick.index(positions.len())];
            let mut broken = stream.clone();
            broken.remove(at);
            prop_assert!(framer.scan(&broken).is_some());
        }
    }
}
