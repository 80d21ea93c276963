//! Reply framing and the replies the proxy makes or inspects: command encoding, redirect
//! parsing (MOVED, ASK), and merging the parts of a split command.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol of a connection (client or backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl From<lagwise_shared::resp::Protocol> for Protocol {
    fn from(p: lagwise_shared::resp::Protocol) -> Self {
        match p {
            lagwise_shared::resp::Protocol::Resp2 => Protocol::Resp2,
            lagwise_shared::resp::Protocol::Resp3 => Protocol::Resp3,
        }
    }
}

/// `ROLE`, encoded: sent behind or ahead of a request to learn a node's offset.
pub const ROLE: &[u8] = b"*1\r\n$4\r\nROLE\r\n";

/// Encodes a command as a RESP multibulk.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    encode_into(&mut out, args);
    out.freeze()
}

pub fn encode_into<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    let mut n = itoa::Buffer::new();
    out.put_u8(b'*');
    out.put_slice(n.format(args.len()).as_bytes());
    out.put_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.put_u8(b'$');
        out.put_slice(n.format(a.len()).as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// The length of the first complete reply in `buf`, None if incomplete. The protocol picks the
/// decoder: RESP2 has nulls (`$-1`) that RESP3 does not, RESP3 has types RESP2 does not.
pub fn frame_len(buf: &[u8], protocol: Protocol) -> Result<Option<usize>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if let Some(len) = simple_len(buf, protocol) {
        return Ok(len);
    }
    let decoded = match protocol {
        Protocol::Resp2 => {
            redis_protocol::resp2::decode::decode_range(buf).map(|o| o.map(|(_, n)| n))
        }
        Protocol::Resp3 => {
            redis_protocol::resp3::decode::complete::decode_range(buf).map(|o| o.map(|(_, n)| n))
        }
    };
    decoded.map_err(|e| e.to_string())
}

/// The length of a reply of the shapes most replies have, a line (`+`, `-`, `:`) or a bulk
/// string (`$`), read in place: Some(None) if incomplete, None for any other shape or
/// anything unusual (the decoder then frames it, or gives the error). Every reply passes
/// here, some twice; the decoder builds a frame description on the way, which this skips.
fn simple_len(buf: &[u8], protocol: Protocol) -> Option<Option<usize>> {
    let line_end = |from: usize| -> Option<Option<usize>> {
        match buf[from..].iter().position(|&b| b == b'\n') {
            // The longest line a decoder would wait for is not ours to judge.
            None if buf.len() > 64 * 1024 => None,
            None => Some(None),
            Some(p) if p > 0 && buf[from + p - 1] == b'\r' => Some(Some(from + p + 1)),
            Some(_) => None,
        }
    };
    match buf[0] {
        b'+' | b'-' | b':' => line_end(1),
        b'$' => {
            let header = match line_end(1)? {
                Some(h) => h,
                None => return Some(None),
            };
            let digits = &buf[1..header - 2];
            if digits == b"-1" {
                // A RESP2 null; RESP3 has `_` for it.
                return (protocol == Protocol::Resp2).then_some(Some(header));
            }
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let len = digits
                .iter()
                .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
            let end = header + len + 2;
            if buf.len() < end {
                return Some(None);
            }
            (&buf[end - 2..end] == b"\r\n").then_some(Some(end))
        }
        _ => None,
    }
}

/// A redirect from a cluster node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved { slot: u16, addr: String },
    Ask { slot: u16, addr: String },
}

/// Reads `-MOVED <slot> <host:port>` or `-ASK <slot> <host:port>`.
pub fn redirect(reply: &[u8]) -> Option<Redirect> {
    let (moved, rest) = if let Some(r) = reply.strip_prefix(b"-MOVED ") {
        (true, r)
    } else if let Some(r) = reply.strip_prefix(b"-ASK ") {
        (false, r)
    } else {
        return None;
    };
    let line = std::str::from_utf8(rest).ok()?.trim_end();
    let (slot, addr) = line.split_once(' ')?;
    let slot: u16 = slot.parse().ok()?;
    let addr = addr.to_string();
    Some(if moved {
        Redirect::Moved { slot, addr }
    } else {
        Redirect::Ask { slot, addr }
    })
}

/// Whether the reply is an error a retry after a short wait may fix (slot migration in
/// progress, cluster briefly down, a replica loading).
pub fn is_transient(reply: &[u8]) -> bool {
    reply.starts_with(b"-TRYAGAIN")
        || reply.starts_with(b"-CLUSTERDOWN")
        || reply.starts_with(b"-LOADING")
}

pub fn error(msg: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.len() + 3);
    out.put_u8(b'-');
    out.put_slice(msg.replace(['\r', '\n'], " ").as_bytes());
    out.put_slice(b"\r\n");
    out.freeze()
}

/// An integer reply's value.
pub fn integer(reply: &[u8]) -> Option<i64> {
    let line = reply.strip_prefix(b":")?;
    let end = line.iter().position(|&b| b == b'\r')?;
    std::str::from_utf8(&line[..end]).ok()?.parse().ok()
}

/// Splits an array reply into its elements' raw bytes.
pub fn array_elements(reply: &Bytes, protocol: Protocol) -> Option<Vec<Bytes>> {
    if !reply.starts_with(b"*") {
        return None;
    }
    array_like_elements(reply, protocol)
}

/// Like `array_elements`, for an array or a RESP3 push (`>`).
pub fn array_like_elements(reply: &Bytes, protocol: Protocol) -> Option<Vec<Bytes>> {
    let rest = reply
        .strip_prefix(b"*")
        .or_else(|| reply.strip_prefix(b">"))?;
    let end = rest.iter().position(|&b| b == b'\r')?;
    let n: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let mut pos = 1 + end + 2;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let len = frame_len(&reply[pos..], protocol).ok()??;
        out.push(reply.slice(pos..pos + len));
        pos += len;
    }
    Some(out)
}

/// The payload of a bulk string reply.
pub fn bulk_payload(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.strip_prefix(b"$")?;
    let end = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    rest.get(end + 2..end + 2 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder's framing, without the fast path.
    fn decoded_len(buf: &[u8], protocol: Protocol) -> Result<Option<usize>, String> {
        match protocol {
            Protocol::Resp2 => {
                redis_protocol::resp2::decode::decode_range(buf).map(|o| o.map(|(_, n)| n))
            }
            Protocol::Resp3 => redis_protocol::resp3::decode::complete::decode_range(buf)
                .map(|o| o.map(|(_, n)| n)),
        }
        .map_err(|e| e.to_string())
    }

    #[test]
    fn simple_replies_are_framed_as_the_decoder_frames_them() {
        let replies: [&[u8]; 9] = [
            b"+OK\r\n",
            b"-ERR wrong\r\n",
            b":12345\r\n",
            b"$5\r\nhello\r\n",
            b"$0\r\n\r\n",
            b"$4\r\n\r\n\r\n\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"$3\r\nabcX\r\n",
        ];
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            for reply in replies {
                let mut buf = reply.to_vec();
                buf.extend_from_slice(b"+NEXT\r\n");
                for cut in 1..=buf.len() {
                    let fast = frame_len(&buf[..cut], protocol);
                    let slow = decoded_len(&buf[..cut], protocol);
                    match (&fast, &slow) {
                        (Ok(a), Ok(b)) => assert_eq!(a, b, "{protocol:?} {reply:?} cut {cut}"),
                        (Err(_), Err(_)) => {}
                        // Incomplete by one, an error by the other, only for a reply the
                        // decoder refuses once whole.
                        _ => assert!(
                            decoded_len(&buf, protocol).is_err(),
                            "{protocol:?} {reply:?} cut {cut}: {fast:?} vs {slow:?}"
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn redirects() {
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            redirect(b"-ASK 1 10.0.0.1:7000\r\n"),
            Some(Redirect::Ask {
                slot: 1,
                addr: "10.0.0.1:7000".into()
            })
        );
        assert_eq!(redirect(b"-ERR x\r\n"), None);
    }

    #[test]
    fn framing_and_arrays() {
        assert_eq!(frame_len(b"+OK\r\n+O", Protocol::Resp2), Ok(Some(5)));
        assert_eq!(frame_len(b"$3\r\nab", Protocol::Resp2), Ok(None));
        assert_eq!(frame_len(b"$-1\r\n", Protocol::Resp2), Ok(Some(5)));
        assert_eq!(
            frame_len(b"%1\r\n+a\r\n:1\r\n", Protocol::Resp3),
            Ok(Some(12))
        );
        let arr = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n:5\r\n");
        let parts = array_elements(&arr, Protocol::Resp2).expect("array");
        assert_eq!(
            parts,
            vec![
                Bytes::from_static(b"$1\r\na\r\n"),
                Bytes::from_static(b"$-1\r\n"),
                Bytes::from_static(b":5\r\n")
            ]
        );
        assert_eq!(integer(b":42\r\n"), Some(42));
        assert_eq!(
            encode(&[b"GET" as &[u8], b"k"]),
            Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        );
    }
}
