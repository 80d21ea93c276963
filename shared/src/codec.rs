//! RESP request framing, bounded the way Valkey bounds it.
//!
//! Requests are either multibulk (`*<n>\r\n$<len>\r\n<bytes>\r\n...`) or inline (a line of
//! space-separated words, as typed in telnet). Replies from servers are read with
//! `redis-protocol` (see the proxy); requests have rules of their own (inline syntax, the
//! limits and exact error strings of Valkey, unauthenticated limits), so they are framed here.
//!
//! The decoder keeps its progress between calls: a large request arriving in many reads is
//! scanned once, not once per read, and nothing is allocated ahead of bytes that arrived.
//! Arguments are zero-copy slices of the read buffer.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Longest inline request, and longest `*`/`$` header line (Valkey's PROTO_INLINE_MAX_SIZE).
pub const INLINE_MAX: usize = 64 * 1024;
/// Default largest bulk string (Valkey's `proto-max-bulk-len`).
pub const DEFAULT_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// Most arguments a multibulk may declare (Valkey rejects counts above INT_MAX).
pub const MAX_MULTIBULK_LEN: i64 = i32::MAX as i64;
/// Limits for clients that have not authenticated yet (when a password is required).
pub const UNAUTH_MAX_MULTIBULK_LEN: i64 = 10;
pub const UNAUTH_MAX_BULK_LEN: i64 = 16384;

/// A protocol error. The text is Valkey's, without the `ERR ` prefix; after it the server
/// replies `-ERR <text>` and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub Cow<'static, str>);

/// Why decoding stopped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("Protocol error: {}", .0 .0)]
    Protocol(ProtocolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ProtocolError> for DecodeError {
    fn from(e: ProtocolError) -> Self {
        DecodeError::Protocol(e)
    }
}

fn protocol(text: impl Into<Cow<'static, str>>) -> DecodeError {
    DecodeError::Protocol(ProtocolError(text.into()))
}

/// One request: the command name and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub args: Vec<Bytes>,
}

impl Request {
    pub fn name(&self) -> &[u8] {
        self.args.first().map(|a| a.as_ref()).unwrap_or(b"")
    }
}

/// Arguments a [`Frame`] holds; requests with more are decoded as a [`Request`].
pub const FRAME_MAX_ARGS: usize = 8;

/// Spare room a connection's read buffer keeps before each read, and what it grows by.
const READ_ROOM: usize = 4 * 1024;
const READ_GROWTH: usize = 16 * 1024;

/// Makes room in `buf` for the next read. `read_buf` reads only as much as the buffer has
/// spare (64 bytes once it is full), so a buffer whose spare room has run low would cut a
/// peer's pipeline into several short reads: more system calls, and requests that arrived
/// together no longer handled together.
pub fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_GROWTH);
    }
}

/// A whole multibulk request as it arrived: its bytes, untouched, and where each argument
/// lies in them. A proxy forwards `raw` as is, so a request is neither split into arguments
/// nor encoded again.
#[derive(Debug, Clone)]
pub struct Frame {
    pub raw: Bytes,
    spans: [(u32, u32); FRAME_MAX_ARGS],
    argc: u8,
}

impl Frame {
    pub fn argc(&self) -> usize {
        usize::from(self.argc)
    }

    /// Argument `i` (0 is the command name); empty past the last.
    pub fn arg(&self, i: usize) -> &[u8] {
        match self.spans[..self.argc()].get(i) {
            Some(&(start, end)) => &self.raw[start as usize..end as usize],
            None => b"",
        }
    }

    /// The same request as separate arguments (zero-copy slices of `raw`).
    pub fn into_request(self) -> Request {
        let args = self.spans[..self.argc()]
            .iter()
            .map(|&(start, end)| self.raw.slice(start as usize..end as usize))
            .collect();
        Request { args }
    }
}

/// What [`RequestDecoder::decode_frame`] returns.
#[derive(Debug)]
pub enum Decoded {
    /// A small multibulk request that had fully arrived.
    Frame(Frame),
    /// Anything else: inline, large, split across reads, or in an unauthenticated session.
    Request(Request),
}

#[derive(Debug, Default)]
enum State {
    /// Between requests.
    #[default]
    Start,
    /// Inside a multibulk: this many arguments still to read, collected so far in `args`.
    Multibulk { remaining: usize },
    /// Inside a multibulk, the header of the next bulk read: its payload is this long.
    Bulk { remaining: usize, len: usize },
}

/// Frames requests out of a byte stream.
#[derive(Debug)]
pub struct RequestDecoder {
    state: State,
    args: Vec<Bytes>,
    /// Where the scan for a newline resumes in an incomplete inline request or header.
    scanned: usize,
    max_bulk_len: u64,
    authenticated: bool,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BULK_LEN)
    }
}

impl RequestDecoder {
    pub fn new(max_bulk_len: u64) -> Self {
        RequestDecoder {
            state: State::Start,
            args: Vec::new(),
            scanned: 0,
            max_bulk_len,
            authenticated: true,
        }
    }

    /// Unauthenticated clients get Valkey's tighter limits (10 arguments, 16 KiB bulks).
    pub fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    pub fn set_max_bulk_len(&mut self, max_bulk_len: u64) {
        self.max_bulk_len = max_bulk_len;
    }

    /// Position of `\r\n` (the `\r`), scanning on from where the last call stopped.
    fn find_crlf(&mut self, buf: &[u8]) -> Option<usize> {
        let from = self.scanned.saturating_sub(1);
        match buf[from..].windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                self.scanned = 0;
                Some(from + p)
            }
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }

    fn decode_inline(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        let from = self.scanned;
        let Some(nl) = buf[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| p + from)
        else {
            if buf.len() > INLINE_MAX {
                return Err(protocol("too big inline request"));
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        self.scanned = 0;
        let line = buf.split_to(nl + 1).freeze();
        let end = if nl > 0 && line[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let args = split_inline(&line, end)?;
        Ok(Some(Request { args }))
    }
}

/// Splits an inline line into words, with Valkey's quoting rules: double quotes take
/// `\n \r \t \b \a \\ \" \xHH` escapes, single quotes take `\'`, and a closing quote must be
/// followed by a space or the end.
fn split_inline(line: &Bytes, end: usize) -> Result<Vec<Bytes>, DecodeError> {
    let s = &line[..end];
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= s.len() {
            return Ok(args);
        }
        match s[i] {
            b'"' | b'\'' => {
                let quote = s[i];
                let mut word = Vec::new();
                i += 1;
                loop {
                    if i >= s.len() {
                        return Err(protocol("unbalanced quotes in request"));
                    }
                    let c = s[i];
                    if quote == b'"'
                        && c == b'\\'
                        && i + 3 < s.len()
                        && s[i + 1] == b'x'
                        && s[i + 2].is_ascii_hexdigit()
                        && s[i + 3].is_ascii_hexdigit()
                    {
                        let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                        word.push(hex(s[i + 2]) * 16 + hex(s[i + 3]));
                        i += 4;
                    } else if c == b'\\' && i + 1 < s.len() && quote == b'"' {
                        word.push(match s[i + 1] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                        i += 2;
                    } else if c == b'\\' && quote == b'\'' && i + 1 < s.len() && s[i + 1] == b'\'' {
                        word.push(b'\'');
                        i += 2;
                    } else if c == quote {
                        if i + 1 < s.len() && !s[i + 1].is_ascii_whitespace() {
                            return Err(protocol("unbalanced quotes in request"));
                        }
                        i += 1;
                        break;
                    } else {
                        word.push(c);
                        i += 1;
                    }
                }
                args.push(Bytes::from(word));
            }
            _ => {
                let start = i;
                while i < s.len() && !s[i].is_ascii_whitespace() {
                    i += 1;
                }
                args.push(line.slice(start..i));
            }
        }
    }
}

/// Parses a RESP length: an optional '-' and decimal digits, nothing else, no overflow.
fn parse_len(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -n } else { n })
}

impl RequestDecoder {
    /// Like `decode`, but a small multibulk request that has fully arrived comes back whole,
    /// as a [`Frame`]. Anything the fast scan is not sure of (limits, errors, a request split
    /// across reads) goes through `decode`, which gives Valkey's errors and keeps progress.
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        if matches!(self.state, State::Start) && self.authenticated {
            if let Some(frame) = self.scan_frame(buf) {
                return Ok(Some(Decoded::Frame(frame)));
            }
        }
        Ok(self.decode(buf)?.map(Decoded::Request))
    }

    /// A complete, valid multibulk of at most `FRAME_MAX_ARGS` arguments at the start of
    /// `buf`, split off; None (and `buf` untouched) otherwise.
    fn scan_frame(&self, buf: &mut BytesMut) -> Option<Frame> {
        /// A `<prefix><digits>\r\n` header at `at`: the number and where the line ends.
        fn header(buf: &[u8], at: usize, prefix: u8) -> Option<(i64, usize)> {
            let rest = buf.get(at..)?;
            if rest.first() != Some(&prefix) {
                return None;
            }
            // A length has at most 20 characters; longer is for `decode` to refuse.
            let line = &rest[..rest.len().min(24)];
            let cr = line.iter().position(|&b| b == b'\r')?;
            if line.get(cr + 1) != Some(&b'\n') {
                return None;
            }
            Some((parse_len(&line[1..cr])?, at + cr + 2))
        }
        let (n, mut pos) = header(buf, 0, b'*')?;
        if n <= 0 || n as usize > FRAME_MAX_ARGS {
            return None;
        }
        let mut spans = [(0u32, 0u32); FRAME_MAX_ARGS];
        for span in spans.iter_mut().take(n as usize) {
            let (len, start) = header(buf, pos, b'$')?;
            if len < 0 || len as u64 > self.max_bulk_len {
                return None;
            }
            let end = start.checked_add(len as usize)?;
            if buf.get(end..end + 2)? != b"\r\n" || end + 2 > u32::MAX as usize {
                return None;
            }
            *span = (start as u32, end as u32);
            pos = end + 2;
        }
        Some(Frame {
            raw: buf.split_to(pos).freeze(),
            spans,
            argc: n as u8,
        })
    }
}

impl Decoder for RequestDecoder {
    type Item = Request;
    type Error = DecodeError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        loop {
            match self.state {
                State::Start => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        match self.decode_inline(buf)? {
                            // An empty line is skipped, as Valkey skips it.
                            Some(req) if req.args.is_empty() => continue,
                            other => return Ok(other),
                        }
                    }
                    let Some(cr) = self.find_crlf(buf) else {
                        if buf.len() > INLINE_MAX {
                            return Err(protocol("too big mbulk count string"));
                        }
                        return Ok(None);
                    };
                    let n = parse_len(&buf[1..cr])
                        .filter(|n| *n <= MAX_MULTIBULK_LEN)
                        .ok_or_else(|| protocol("invalid multibulk length"))?;
                    if !self.authenticated && n > UNAUTH_MAX_MULTIBULK_LEN {
                        return Err(protocol("unauthenticated multibulk length"));
                    }
                    buf.advance(cr + 2);
                    if n <= 0 {
                        continue;
                    }
                    // Reserve for what a typical command has, not for what the peer claims.
                    self.args = Vec::with_capacity((n as usize).min(16));
                    self.state = State::Multibulk {
                        remaining: n as usize,
                    };
                }
                State::Multibulk { remaining } => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(protocol(format!("expected '$', got '{}'", first as char)));
                    }
                    let Some(cr) = self.find_crlf(buf) else {
                        if buf.len() > INLINE_MAX {
                            return Err(protocol("too big bulk count string"));
                        }
                        return Ok(None);
                    };
                    let len = parse_len(&buf[1..cr])
                        .filter(|n| *n >= 0 && (*n as u64) <= self.max_bulk_len)
                        .ok_or_else(|| protocol("invalid bulk length"))?;
                    if !self.authenticated && len > UNAUTH_MAX_BULK_LEN {
                        return Err(protocol("unauthenticated bulk length"));
                    }
                    buf.advance(cr + 2);
                    self.state = State::Bulk {
                        remaining,
                        len: len as usize,
                    };
                }
                State::Bulk { remaining, len } => {
                    if buf.len() < len + 2 {
                        // Grow towards the announced size only as bytes arrive.
                        return Ok(None);
                    }
                    if &buf[len..len + 2] != b"\r\n" {
                        return Err(protocol("invalid bulk terminator"));
                    }
                    let arg = buf.split_to(len).freeze();
                    buf.advance(2);
                    self.args.push(arg);
                    if remaining == 1 {
                        self.state = State::Start;
                        return Ok(Some(Request {
                            args: std::mem::take(&mut self.args),
                        }));
                    }
                    self.state = State::Multibulk {
                        remaining: remaining - 1,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
