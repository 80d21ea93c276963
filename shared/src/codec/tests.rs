use super::*;

fn decode_all(input: &[u8]) -> (Vec<Request>, Result<(), String>, BytesMut) {
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, Ok(()), buf),
            Err(e) => return (out, Err(e.to_string()), buf),
        }
    }
}

fn args(r: &Request) -> Vec<&[u8]> {
    r.args.iter().map(|a| a.as_ref()).collect()
}

#[test]
fn multibulk_requests_pipelined() {
    let (reqs, res, rest) = decode_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n");
    assert!(res.is_ok());
    assert!(rest.is_empty());
    assert_eq!(args(&reqs[0]), vec![&b"GET"[..], b"k"]);
    assert_eq!(args(&reqs[1]), vec![&b"PING"[..]]);
}

#[test]
fn a_request_split_at_every_byte_decodes_once() {
    let wire = b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$11\r\nhello world\r\n";
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in wire.iter() {
        buf.extend_from_slice(&[b]);
        while let Some(r) = dec.decode(&mut buf).expect("valid") {
            got.push(r);
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(args(&got[0]), vec![&b"SET"[..], b"hello", b"hello world"]);
}

#[test]
fn binary_bulk_strings_are_kept_exactly() {
    let (reqs, res, _) = decode_all(b"*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\x00\xff\r\n");
    assert!(res.is_ok());
    assert_eq!(reqs[0].args[1].as_ref(), b"\r\n\x00\xff");
}

#[test]
fn inline_requests_with_quotes() {
    let (reqs, res, _) = decode_all(b"SET k \"a b\\x41\\n\"\r\nGET 'it\\'s'\nPING\r\n\r\n");
    assert!(res.is_ok());
    assert_eq!(args(&reqs[0]), vec![&b"SET"[..], b"k", b"a bA\n"]);
    assert_eq!(args(&reqs[1]), vec![&b"GET"[..], b"it's"]);
    assert_eq!(args(&reqs[2]), vec![&b"PING"[..]]);
    assert_eq!(reqs.len(), 3);
}

#[test]
fn unbalanced_quotes_are_a_protocol_error() {
    let (_, res, _) = decode_all(b"SET k \"abc\r\n");
    assert_eq!(
        res,
        Err("Protocol error: unbalanced quotes in request".into())
    );
    let (_, res, _) = decode_all(b"SET k \"abc\"x\r\n");
    assert_eq!(
        res,
        Err("Protocol error: unbalanced quotes in request".into())
    );
}

#[test]
fn valkey_length_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"*abc\r\n", "Protocol error: invalid multibulk length"),
        (
            b"*3000000000\r\n",
            "Protocol error: invalid multibulk length",
        ),
        (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
        (
            b"*1\r\n$536870913\r\n",
            "Protocol error: invalid bulk length",
        ),
        (
            b"*1\r\n$99999999999999999999999\r\n",
            "Protocol error: invalid bulk length",
        ),
        (b"*1\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
    ];
    for (input, want) in cases {
        let (_, res, _) = decode_all(input);
        assert_eq!(
            res,
            Err(want.to_string()),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn the_largest_allowed_bulk_is_awaited_not_allocated() {
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\nabc"[..]);
    assert!(dec.decode(&mut buf).expect("valid so far").is_none());
    assert!(
        buf.capacity() < 1024 * 1024,
        "must not reserve the claimed length"
    );
}

#[test]
fn empty_multibulk_and_blank_lines_are_skipped() {
    let (reqs, res, _) = decode_all(b"*0\r\n*-1\r\n\r\n*1\r\n$4\r\nPING\r\n");
    assert!(res.is_ok());
    assert_eq!(reqs.len(), 1);
}

#[test]
fn oversized_inline_and_headers_are_refused() {
    let long = vec![b'a'; INLINE_MAX + 1];
    let (_, res, _) = decode_all(&long);
    assert_eq!(res, Err("Protocol error: too big inline request".into()));
    let mut hdr = b"*".to_vec();
    hdr.extend(std::iter::repeat_n(b'1', INLINE_MAX + 1));
    let (_, res, _) = decode_all(&hdr);
    assert_eq!(
        res,
        Err("Protocol error: too big mbulk count string".into())
    );
}

#[test]
fn unauthenticated_limits() {
    let mut dec = RequestDecoder::default();
    dec.set_authenticated(false);
    let mut buf = BytesMut::from(&b"*11\r\n"[..]);
    let err = dec.decode(&mut buf).expect_err("too many args");
    assert_eq!(
        err.to_string(),
        "Protocol error: unauthenticated multibulk length"
    );
    let mut dec = RequestDecoder::default();
    dec.set_authenticated(false);
    let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$16385\r\n"[..]);
    let err = dec.decode(&mut buf).expect_err("bulk too long");
    assert_eq!(
        err.to_string(),
        "Protocol error: unauthenticated bulk length"
    );
}

/// Decodes with `decode_frame`, feeding `input` in chunks of `chunk` bytes; frames come back
/// as requests, with the raw bytes of each frame checked against the wire.
fn decode_frames(input: &[u8], chunk: usize) -> (Vec<Request>, usize, Result<(), String>) {
    let mut dec = RequestDecoder::default();
    let mut buf = BytesMut::new();
    let (mut out, mut frames) = (Vec::new(), 0);
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode_frame(&mut buf) {
                Ok(Some(Decoded::Frame(f))) => {
                    frames += 1;
                    let req = f.clone().into_request();
                    let mut again = BytesMut::new();
                    again.extend_from_slice(format!("*{}\r\n", req.args.len()).as_bytes());
                    for (i, a) in req.args.iter().enumerate() {
                        assert_eq!(f.arg(i), a.as_ref());
                        again.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                        again.extend_from_slice(a);
                        again.extend_from_slice(b"\r\n");
                    }
                    assert_eq!(f.raw.as_ref(), &again[..], "raw is the frame as sent");
                    assert_eq!(f.arg(req.args.len()), b"", "past the last argument");
                    out.push(req);
                }
                Ok(Some(Decoded::Request(r))) => out.push(r),
                Ok(None) => break,
                Err(e) => return (out, frames, Err(e.to_string())),
            }
        }
    }
    (out, frames, Ok(()))
}

#[test]
fn frames_decode_as_requests_do_in_any_chunking() {
    let mut wire = Vec::new();
    wire.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    wire.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$4\r\n\r\n\x00\xff\r\n$0\r\n\r\n");
    wire.extend_from_slice(b"PING inline\r\n");
    // More arguments than a frame holds.
    wire.extend_from_slice(b"*9\r\n$4\r\nMGET");
    for k in 1..=8 {
        wire.extend_from_slice(format!("\r\n$1\r\n{k}").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(b"*0\r\n*1\r\n$4\r\nPING\r\n");
    let (want, res, _) = decode_all(&wire);
    assert!(res.is_ok());
    assert_eq!(want.len(), 5);
    for chunk in [1, 2, 3, 7, 16, wire.len()] {
        let (got, frames, res) = decode_frames(&wire, chunk);
        assert!(res.is_ok(), "chunk {chunk}: {res:?}");
        assert_eq!(got, want, "chunk {chunk}");
        if chunk == wire.len() {
            // The PING after `*0` is read on by `decode`, which skips the empty multibulk.
            assert_eq!(frames, 2, "GET and SET arrive whole");
        }
    }
}

#[test]
fn frames_keep_the_decoders_errors_and_limits() {
    for bad in [
        &b"*2\r\n$3\r\nGET\r\n$1\r\nkX\r\n"[..],
        b"*1\r\n$-5\r\n",
        b"*1\r\n+PING\r\n",
        b"*x\r\n",
    ] {
        let (_, want, _) = decode_all(bad);
        let (_, _, got) = decode_frames(bad, bad.len());
        assert!(want.is_err(), "{bad:?}");
        assert_eq!(got, want, "{bad:?}");
    }
    let mut dec = RequestDecoder::new(4);
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n"[..]);
    let err = dec.decode_frame(&mut buf).expect_err("bulk over the limit");
    assert_eq!(err.to_string(), "Protocol error: invalid bulk length");
    let mut dec = RequestDecoder::default();
    dec.set_authenticated(false);
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
    assert!(matches!(
        dec.decode_frame(&mut buf),
        Ok(Some(Decoded::Request(_)))
    ));
}
