//! Writing replies in RESP2 or RESP3 straight into the output buffer.
//!
//! Commands write their reply as they compute it; nothing is built as a tree first. Where the
//! two protocols differ (null, maps, sets, doubles, booleans, push), the writer picks the form
//! the client negotiated with `HELLO`.

use bytes::{BufMut, BytesMut};

/// The protocol a client speaks, chosen with `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// Error replies that clients match on, worded exactly as Valkey words them.
pub mod errors {
    pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
    pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
    pub const NOT_FLOAT: &str = "ERR value is not a valid float";
    pub const SYNTAX: &str = "ERR syntax error";
    pub const NO_SUCH_KEY: &str = "ERR no such key";
    pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
    pub const NOAUTH: &str = "NOAUTH Authentication required.";
    pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
    pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";
    pub const NAN_OR_INF: &str = "ERR increment would produce NaN or Infinity";
    pub const INVALID_EXPIRE: &str = "ERR invalid expire time in '{}' command";
}

/// A reply sink for one client.
#[derive(Debug)]
pub struct ReplyWriter<'a> {
    pub out: &'a mut BytesMut,
    pub protocol: Protocol,
}

impl<'a> ReplyWriter<'a> {
    pub fn new(out: &'a mut BytesMut, protocol: Protocol) -> Self {
        ReplyWriter { out, protocol }
    }

    pub fn is_resp3(&self) -> bool {
        self.protocol == Protocol::Resp3
    }

    fn line(&mut self, prefix: u8, n: i64) {
        let mut b = itoa::Buffer::new();
        self.out.reserve(24);
        self.out.put_u8(prefix);
        self.out.put_slice(b.format(n).as_bytes());
        self.out.put_slice(b"\r\n");
    }

    pub fn ok(&mut self) {
        self.out.put_slice(b"+OK\r\n");
    }

    /// `+text`; `text` must not contain CR or LF.
    pub fn simple(&mut self, text: &str) {
        self.out.reserve(text.len() + 3);
        self.out.put_u8(b'+');
        self.out.put_slice(text.as_bytes());
        self.out.put_slice(b"\r\n");
    }

    /// `-text`, where `text` starts with its code (`ERR`, `WRONGTYPE`, `MOVED`, ...). Line breaks
    /// in `text` would break the stream, so they become spaces, as Valkey does.
    pub fn error(&mut self, text: impl AsRef<[u8]>) {
        let text = text.as_ref();
        self.out.reserve(text.len() + 3);
        self.out.put_u8(b'-');
        for &b in text {
            self.out
                .put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        self.out.put_slice(b"\r\n");
    }

    pub fn int(&mut self, n: i64) {
        self.line(b':', n);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.line(b'$', data.len() as i64);
        self.out.reserve(data.len() + 2);
        self.out.put_slice(data);
        self.out.put_slice(b"\r\n");
    }

    /// An integer written as a bulk string.
    pub fn bulk_int(&mut self, n: i64) {
        let mut b = itoa::Buffer::new();
        let s = b.format(n);
        self.bulk(s.as_bytes());
    }

    /// The null bulk string (`$-1` / `_`).
    pub fn null(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.out.put_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.out.put_slice(b"_\r\n"),
        }
    }

    /// The null array (`*-1` / `_`).
    pub fn null_array(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.out.put_slice(b"*-1\r\n"),
            Protocol::Resp3 => self.out.put_slice(b"_\r\n"),
        }
    }

    pub fn array(&mut self, len: usize) {
        self.line(b'*', len as i64);
    }

    /// A map of `len` pairs: `%len` in RESP3, a flat array of `2*len` in RESP2.
    pub fn map(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.line(b'*', 2 * len as i64),
            Protocol::Resp3 => self.line(b'%', len as i64),
        }
    }

    /// A set: `~len` in RESP3, an array in RESP2.
    pub fn set(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.line(b'*', len as i64),
            Protocol::Resp3 => self.line(b'~', len as i64),
        }
    }

    /// A push message header: `>len` in RESP3, an array in RESP2.
    pub fn push(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.line(b'*', len as i64),
            Protocol::Resp3 => self.line(b'>', len as i64),
        }
    }

    /// A boolean: `#t`/`#f` in RESP3, `:1`/`:0` in RESP2.
    pub fn boolean(&mut self, v: bool) {
        match self.protocol {
            Protocol::Resp2 => self.int(v as i64),
            Protocol::Resp3 => self.out.put_slice(if v { b"#t\r\n" } else { b"#f\r\n" }),
        }
    }

    /// A double: `,text` in RESP3, a bulk string in RESP2. `text` is already formatted the way
    /// the command formats its doubles.
    pub fn double_text(&mut self, text: &[u8]) {
        match self.protocol {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.out.reserve(text.len() + 3);
                self.out.put_u8(b',');
                self.out.put_slice(text);
                self.out.put_slice(b"\r\n");
            }
        }
    }

    /// Verbatim text (`=len\r\ntxt:...` in RESP3, a bulk string in RESP2), as INFO and
    /// CLIENT LIST reply.
    pub fn verbatim(&mut self, text: &[u8]) {
        match self.protocol {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.line(b'=', text.len() as i64 + 4);
                self.out.put_slice(b"txt:");
                self.out.put_slice(text);
                self.out.put_slice(b"\r\n");
            }
        }
    }

    /// An array of simple strings, as HELP subcommands reply.
    pub fn simples(&mut self, lines: &[&str]) {
        self.array(lines.len());
        for line in lines {
            self.simple(line);
        }
    }

    pub fn bulks<I, T>(&mut self, items: I)
    where
        I: ExactSizeIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.array(items.len());
        for i in items {
            self.bulk(i.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(p: Protocol, f: impl FnOnce(&mut ReplyWriter<'_>)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut ReplyWriter::new(&mut out, p));
        out.to_vec()
    }

    #[test]
    fn resp2_and_resp3_forms() {
        assert_eq!(render(Protocol::Resp2, |w| w.null()), b"$-1\r\n");
        assert_eq!(render(Protocol::Resp3, |w| w.null()), b"_\r\n");
        assert_eq!(render(Protocol::Resp2, |w| w.map(2)), b"*4\r\n");
        assert_eq!(render(Protocol::Resp3, |w| w.map(2)), b"%2\r\n");
        assert_eq!(render(Protocol::Resp3, |w| w.boolean(true)), b"#t\r\n");
        assert_eq!(
            render(Protocol::Resp2, |w| w.double_text(b"1.5")),
            b"$3\r\n1.5\r\n"
        );
        assert_eq!(
            render(Protocol::Resp3, |w| w.double_text(b"1.5")),
            b",1.5\r\n"
        );
        assert_eq!(
            render(Protocol::Resp3, |w| w.verbatim(b"hi")),
            b"=6\r\ntxt:hi\r\n"
        );
    }

    #[test]
    fn error_text_cannot_break_the_stream() {
        assert_eq!(
            render(Protocol::Resp2, |w| w.error("ERR a\r\nb")),
            b"-ERR a  b\r\n"
        );
    }

    #[test]
    fn integers_and_bulks() {
        assert_eq!(render(Protocol::Resp2, |w| w.int(-42)), b":-42\r\n");
        assert_eq!(render(Protocol::Resp2, |w| w.bulk(b"")), b"$0\r\n\r\n");
        assert_eq!(render(Protocol::Resp2, |w| w.bulk_int(7)), b"$1\r\n7\r\n");
    }
}
