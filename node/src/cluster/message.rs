//! The cluster bus wire format: what lagwise nodes send each other on the bus port.
//!
//! Only lagwise nodes speak it (it is not Valkey's `clusterMsg`), so it is shaped for checking
//! rather than for compatibility: every field has a fixed size or a length prefix, every bound
//! is checked before anything is allocated, and a frame that breaks any rule is a [`BusError`]
//! for that link, never a panic.
//!
//! A frame, integers big-endian:
//!
//! ```text
//! magic     4     "LWCB"
//! version   2     VERSION
//! length    4     the whole frame, these 10 bytes included; MIN_FRAME..=MAX_FRAME
//! kind      1
//! header    sender (id), current_epoch (8), config_epoch (8), repl_offset (8), flags (2),
//!           primary (optional id), ip (short string), port (2), cport (2),
//!           slots (2048-byte bitmap, slot s is bit s % 8 of byte s / 8), shard_id (optional id)
//! body      by kind:
//!           PING, PONG, MEET       count (2, ≤ 1000), then per entry: id, ip (short string),
//!                                  port (2), cport (2), flags (2), ping_sent (8), pong_received (8)
//!           FAIL                   id
//!           UPDATE                 id, config_epoch (8), slots (2048)
//!           PUBLISH, PUBLISH_SHARD channel, message: each a length (4, ≤ 64 KiB) and bytes
//!           the others             nothing
//! ```
//!
//! An id is 40 lowercase hex bytes; an optional id is a length byte, 0 or 40, then the id; a
//! short string is a length byte (≤ 46) then UTF-8 bytes. Flags are a bitfield of known bits.
//!
//! The encoding is canonical: [`encode`] enforces the rules [`decode`] checks, so a message
//! encodes if and only if it can be decoded, and a frame decodes if and only if it is exactly
//! what `encode` makes of the result.

use std::io;

use bytes::BufMut;
use lagwise_shared::slot::SLOT_COUNT;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::state::{NodeFlags, NodeId, SlotSet};
use crate::rdb::cursor::{bounded_capacity, Cursor};

pub const MAGIC: [u8; 4] = *b"LWCB";
pub const VERSION: u16 = 1;
/// The largest frame accepted (header + gossip of up to a few hundred nodes); a larger length
/// prefix is an error before any allocation.
///
/// Every message that [`encode`] accepts fits: the largest are a PUBLISH with a 64 KiB channel
/// and a 64 KiB message (about 130 KiB) and a PING with 1000 gossip entries (about 110 KiB).
pub const MAX_FRAME: usize = 256 * 1024;

/// Magic, version and length: read first, and enough to decide whether to read the rest.
const PREFIX_LEN: usize = 4 + 2 + 4;
/// The length of a node id on the wire.
const ID_LEN: usize = 40;
/// The slot bitmap.
const SLOTS_LEN: usize = SLOT_COUNT / 8;
/// The smallest possible frame: a header without primary, ip or shard id, and an empty body.
const MIN_FRAME: usize = PREFIX_LEN + 1 + ID_LEN + 3 * 8 + 2 + 1 + 1 + 2 * 2 + SLOTS_LEN + 1;
/// The longest announced ip: INET6_ADDRSTRLEN, as Valkey sizes its ip fields (the longest
/// textual address, IPv6 with an embedded IPv4 one, is 45).
pub const MAX_IP_LEN: usize = 46;
/// The longest PUBLISH channel, and the longest PUBLISH message.
pub const MAX_PUBLISH_LEN: usize = 64 * 1024;
/// The most gossip entries in one PING, PONG or MEET.
pub const MAX_GOSSIP: usize = 1000;
/// The smallest gossip entry (empty ip), to bound an allocation by what the frame can hold.
const MIN_GOSSIP_LEN: usize = ID_LEN + 1 + 3 * 2 + 2 * 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Pong,
    Meet,
    Fail,
    Update,
    Publish,
    PublishShard,
    FailoverAuthRequest,
    FailoverAuthAck,
    MfStart,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Ping,
        Kind::Pong,
        Kind::Meet,
        Kind::Fail,
        Kind::Update,
        Kind::Publish,
        Kind::PublishShard,
        Kind::FailoverAuthRequest,
        Kind::FailoverAuthAck,
        Kind::MfStart,
    ];

    /// The wire code: 1 and up, so that a zeroed byte is never a valid kind.
    pub fn code(self) -> u8 {
        match self {
            Kind::Ping => 1,
            Kind::Pong => 2,
            Kind::Meet => 3,
            Kind::Fail => 4,
            Kind::Update => 5,
            Kind::Publish => 6,
            Kind::PublishShard => 7,
            Kind::FailoverAuthRequest => 8,
            Kind::FailoverAuthAck => 9,
            Kind::MfStart => 10,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The name Valkey gives the message type, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Pong => "pong",
            Kind::Meet => "meet",
            Kind::Fail => "fail",
            Kind::Update => "update",
            Kind::Publish => "publish",
            Kind::PublishShard => "publishshard",
            Kind::FailoverAuthRequest => "auth-req",
            Kind::FailoverAuthAck => "auth-ack",
            Kind::MfStart => "mfstart",
        }
    }

    /// Whether `body` is the body this kind carries.
    fn carries(self, body: &Body) -> bool {
        matches!(
            (self, body),
            (Kind::Ping | Kind::Pong | Kind::Meet, Body::Gossip(_))
                | (Kind::Fail, Body::Fail { .. })
                | (Kind::Update, Body::Update { .. })
                | (Kind::Publish | Kind::PublishShard, Body::Publish { .. })
                | (
                    Kind::FailoverAuthRequest | Kind::FailoverAuthAck | Kind::MfStart,
                    Body::Empty
                )
        )
    }
}

/// What every message says about its sender.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub kind: Kind,
    pub sender: NodeId,
    pub current_epoch: u64,
    pub config_epoch: u64,
    pub repl_offset: u64,
    pub flags: NodeFlags,
    /// Message flags (`MF_*`): about this message, not the node. They travel in the high
    /// byte of the header's flags field.
    pub mflags: u8,
    /// For a replica: its primary.
    pub primary: Option<NodeId>,
    /// The announced ip; empty means "use the address the link came from". At most 46 bytes.
    pub ip: String,
    pub port: u16,
    pub cport: u16,
    pub slots: SlotSet,
    /// 40 lowercase hex characters, or empty.
    pub shard_id: String,
}

/// What the sender knows of one other node.
#[derive(Debug, Clone, PartialEq)]
pub struct Gossip {
    pub id: NodeId,
    /// At most 46 bytes; may be empty.
    pub ip: String,
    pub port: u16,
    pub cport: u16,
    pub flags: NodeFlags,
    pub ping_sent: u64,
    pub pong_received: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// PING, PONG, MEET: a few other nodes' state.
    Gossip(Vec<Gossip>),
    /// FAIL: this node is failed.
    Fail { id: NodeId },
    /// UPDATE: the named node owns these slots at this config epoch (sent to a node whose
    /// claim is stale).
    Update {
        id: NodeId,
        config_epoch: u64,
        slots: SlotSet,
    },
    /// PUBLISH / SPUBLISH relayed to other nodes.
    Publish { channel: Vec<u8>, message: Vec<u8> },
    /// Failover auth request/ack, MFSTART: no body beyond the header.
    Empty,
}

impl Body {
    fn name(&self) -> &'static str {
        match self {
            Body::Gossip(_) => "gossip",
            Body::Fail { .. } => "fail",
            Body::Update { .. } => "update",
            Body::Publish { .. } => "publish",
            Body::Empty => "empty",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Header,
    pub body: Body,
}

/// Why a frame could not be read or a message could not be encoded. Any of them ends the link
/// it happened on (the stream position is lost), except from [`encode`], which sends nothing.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bad magic {0:02x?}: not a lagwise cluster bus frame")]
    BadMagic([u8; 4]),
    #[error("unsupported cluster bus version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u16),
    #[error("frame length {0} exceeds the limit of {MAX_FRAME} bytes")]
    FrameTooLarge(u64),
    #[error("frame length {0} is shorter than any frame ({MIN_FRAME} bytes)")]
    FrameTooShort(u64),
    #[error("frame ends inside {field}")]
    Truncated { field: &'static str },
    #[error("{field} is not a node id (40 lowercase hex characters)")]
    BadNodeId { field: &'static str },
    #[error("unknown message kind {0}")]
    BadKind(u8),
    #[error("a {kind} message cannot carry a {body} body", kind = kind.name())]
    KindMismatch { kind: Kind, body: &'static str },
    #[error("{field} is {len} long, more than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is not UTF-8")]
    BadText { field: &'static str },
    #[error("unknown node flags {0:#06x}")]
    BadFlags(u16),
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("cluster bus i/o: {0}")]
    Io(#[from] io::Error),
}

/// A primary paused its writes for a manual failover (its offset is final).
pub const MF_PAUSED: u8 = 1 << 0;
/// A failover vote request that voters grant even though the primary is not failed
/// (CLUSTER FAILOVER, FORCE).
pub const MF_FORCE_ACK: u8 = 1 << 1;
const MF_KNOWN: u8 = MF_PAUSED | MF_FORCE_ACK;

// Node flags on the wire: one bit each.
const FLAG_MYSELF: u16 = 1 << 0;
const FLAG_PRIMARY: u16 = 1 << 1;
const FLAG_REPLICA: u16 = 1 << 2;
const FLAG_PFAIL: u16 = 1 << 3;
const FLAG_FAIL: u16 = 1 << 4;
const FLAG_HANDSHAKE: u16 = 1 << 5;
const FLAG_NOADDR: u16 = 1 << 6;
const FLAG_NOFAILOVER: u16 = 1 << 7;
const FLAGS_KNOWN: u16 = (1 << 8) - 1;

fn flags_to_bits(f: NodeFlags) -> u16 {
    [
        (f.myself, FLAG_MYSELF),
        (f.primary, FLAG_PRIMARY),
        (f.replica, FLAG_REPLICA),
        (f.pfail, FLAG_PFAIL),
        (f.fail, FLAG_FAIL),
        (f.handshake, FLAG_HANDSHAKE),
        (f.noaddr, FLAG_NOADDR),
        (f.nofailover, FLAG_NOFAILOVER),
    ]
    .into_iter()
    .filter(|&(set, _)| set)
    .fold(0, |bits, (_, bit)| bits | bit)
}

/// Unknown bits are an error rather than ignored: a new flag comes with a new [`VERSION`].
fn flags_from_bits(bits: u16) -> Result<NodeFlags, BusError> {
    if bits & !FLAGS_KNOWN != 0 {
        return Err(BusError::BadFlags(bits));
    }
    Ok(NodeFlags {
        myself: bits & FLAG_MYSELF != 0,
        primary: bits & FLAG_PRIMARY != 0,
        replica: bits & FLAG_REPLICA != 0,
        pfail: bits & FLAG_PFAIL != 0,
        fail: bits & FLAG_FAIL != 0,
        handshake: bits & FLAG_HANDSHAKE != 0,
        noaddr: bits & FLAG_NOADDR != 0,
        nofailover: bits & FLAG_NOFAILOVER != 0,
    })
}

fn is_node_id(id: &[u8]) -> bool {
    id.len() == ID_LEN && id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Encodes one message as a whole frame.
///
/// Fails, sending nothing, on a message `decode` would refuse: a body that does not go with
/// the kind, an id that is not 40 lowercase hex characters, or a string or list over its
/// bound (a PUBLISH over 64 KiB, say, cannot be relayed on the bus).
pub fn encode(msg: &Message) -> Result<Vec<u8>, BusError> {
    let h = &msg.header;
    if !h.kind.carries(&msg.body) {
        return Err(BusError::KindMismatch {
            kind: h.kind,
            body: msg.body.name(),
        });
    }
    let mut out = Vec::with_capacity(MIN_FRAME + 256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // the length, filled in below
    out.push(h.kind.code());
    put_id(&mut out, "sender", &h.sender)?;
    out.extend_from_slice(&h.current_epoch.to_be_bytes());
    out.extend_from_slice(&h.config_epoch.to_be_bytes());
    out.extend_from_slice(&h.repl_offset.to_be_bytes());
    if h.mflags & !MF_KNOWN != 0 {
        return Err(BusError::BadFlags(u16::from(h.mflags) << 8));
    }
    let bits = flags_to_bits(h.flags) | (u16::from(h.mflags) << 8);
    out.extend_from_slice(&bits.to_be_bytes());
    put_optional_id(&mut out, "primary", h.primary.as_deref())?;
    put_ip(&mut out, "ip", &h.ip)?;
    out.extend_from_slice(&h.port.to_be_bytes());
    out.extend_from_slice(&h.cport.to_be_bytes());
    out.extend_from_slice(&h.slots.to_bytes());
    put_optional_id(
        &mut out,
        "shard_id",
        Some(h.shard_id.as_str()).filter(|s| !s.is_empty()),
    )?;

    match &msg.body {
        Body::Gossip(entries) => {
            let count = u16::try_from(entries.len())
                .ok()
                .filter(|&n| usize::from(n) <= MAX_GOSSIP)
                .ok_or(BusError::TooLong {
                    field: "gossip",
                    len: entries.len(),
                    max: MAX_GOSSIP,
                })?;
            out.extend_from_slice(&count.to_be_bytes());
            for g in entries {
                put_id(&mut out, "gossip.id", &g.id)?;
                put_ip(&mut out, "gossip.ip", &g.ip)?;
                out.extend_from_slice(&g.port.to_be_bytes());
                out.extend_from_slice(&g.cport.to_be_bytes());
                out.extend_from_slice(&flags_to_bits(g.flags).to_be_bytes());
                out.extend_from_slice(&g.ping_sent.to_be_bytes());
                out.extend_from_slice(&g.pong_received.to_be_bytes());
            }
        }
        Body::Fail { id } => put_id(&mut out, "fail.id", id)?,
        Body::Update {
            id,
            config_epoch,
            slots,
        } => {
            put_id(&mut out, "update.id", id)?;
            out.extend_from_slice(&config_epoch.to_be_bytes());
            out.extend_from_slice(&slots.to_bytes());
        }
        Body::Publish { channel, message } => {
            put_blob(&mut out, "channel", channel)?;
            put_blob(&mut out, "message", message)?;
        }
        Body::Empty => {}
    }

    // The bounds above keep every message well under MAX_FRAME; this is the last word anyway.
    let len = u32::try_from(out.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or(BusError::FrameTooLarge(out.len() as u64))?;
    out[PREFIX_LEN - 4..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

fn put_id(out: &mut Vec<u8>, field: &'static str, id: &str) -> Result<(), BusError> {
    if !is_node_id(id.as_bytes()) {
        return Err(BusError::BadNodeId { field });
    }
    out.extend_from_slice(id.as_bytes());
    Ok(())
}

fn put_optional_id(
    out: &mut Vec<u8>,
    field: &'static str,
    id: Option<&str>,
) -> Result<(), BusError> {
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(ID_LEN as u8);
            put_id(out, field, id)?;
        }
    }
    Ok(())
}

fn put_ip(out: &mut Vec<u8>, field: &'static str, ip: &str) -> Result<(), BusError> {
    let len = ip.len();
    if len > MAX_IP_LEN {
        return Err(BusError::TooLong {
            field,
            len,
            max: MAX_IP_LEN,
        });
    }
    out.push(len as u8);
    out.extend_from_slice(ip.as_bytes());
    Ok(())
}

fn put_blob(out: &mut Vec<u8>, field: &'static str, bytes: &[u8]) -> Result<(), BusError> {
    let len = bytes.len();
    if len > MAX_PUBLISH_LEN {
        return Err(BusError::TooLong {
            field,
            len,
            max: MAX_PUBLISH_LEN,
        });
    }
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Checks magic, version and length, and returns the frame length: everything that must hold
/// before the rest of the frame is worth reading.
fn check_prefix(prefix: [u8; PREFIX_LEN]) -> Result<usize, BusError> {
    let mut r = Reader::new(&prefix);
    let magic: [u8; 4] = r.array("magic")?;
    if magic != MAGIC {
        return Err(BusError::BadMagic(magic));
    }
    let version = r.u16("version")?;
    if version != VERSION {
        return Err(BusError::UnsupportedVersion(version));
    }
    let len = r.u32("length")?;
    match usize::try_from(len) {
        Ok(n) if n > MAX_FRAME => Err(BusError::FrameTooLarge(len.into())),
        Ok(n) if n < MIN_FRAME => Err(BusError::FrameTooShort(len.into())),
        Ok(n) => Ok(n),
        Err(_) => Err(BusError::FrameTooLarge(len.into())),
    }
}

/// Decodes one whole frame, exactly: a frame shorter than its length prefix is truncated, a
/// longer one has trailing bytes.
pub fn decode(frame: &[u8]) -> Result<Message, BusError> {
    let mut r = Reader::new(frame);
    let len = check_prefix(r.array("prefix")?)?;
    if frame.len() < len {
        return Err(BusError::Truncated { field: "frame" });
    }
    if frame.len() > len {
        return Err(BusError::TrailingBytes(frame.len() - len));
    }

    let code = r.u8("kind")?;
    let kind = Kind::from_code(code).ok_or(BusError::BadKind(code))?;
    let sender = r.id("sender")?;
    let current_epoch = r.u64("current_epoch")?;
    let config_epoch = r.u64("config_epoch")?;
    let repl_offset = r.u64("repl_offset")?;
    let header_bits = r.u16("flags")?;
    let header = Header {
        kind,
        sender,
        current_epoch,
        config_epoch,
        repl_offset,
        flags: flags_from_bits(header_bits & 0x00ff)?,
        mflags: {
            let m = (header_bits >> 8) as u8;
            if m & !MF_KNOWN != 0 {
                return Err(BusError::BadFlags(header_bits));
            }
            m
        },
        primary: r.optional_id("primary")?,
        ip: r.ip("ip")?,
        port: r.u16("port")?,
        cport: r.u16("cport")?,
        slots: r.slots("slots")?,
        shard_id: r.optional_id("shard_id")?.unwrap_or_default(),
    };

    let body = match kind {
        Kind::Ping | Kind::Pong | Kind::Meet => {
            let count = usize::from(r.u16("gossip count")?);
            if count > MAX_GOSSIP {
                return Err(BusError::TooLong {
                    field: "gossip",
                    len: count,
                    max: MAX_GOSSIP,
                });
            }
            let mut entries =
                Vec::with_capacity(bounded_capacity(count, r.remaining(), MIN_GOSSIP_LEN));
            for _ in 0..count {
                entries.push(Gossip {
                    id: r.id("gossip.id")?,
                    ip: r.ip("gossip.ip")?,
                    port: r.u16("gossip.port")?,
                    cport: r.u16("gossip.cport")?,
                    flags: r.flags("gossip.flags")?,
                    ping_sent: r.u64("gossip.ping_sent")?,
                    pong_received: r.u64("gossip.pong_received")?,
                });
            }
            Body::Gossip(entries)
        }
        Kind::Fail => Body::Fail {
            id: r.id("fail.id")?,
        },
        Kind::Update => Body::Update {
            id: r.id("update.id")?,
            config_epoch: r.u64("update.config_epoch")?,
            slots: r.slots("update.slots")?,
        },
        Kind::Publish | Kind::PublishShard => Body::Publish {
            channel: r.blob("channel")?,
            message: r.blob("message")?,
        },
        Kind::FailoverAuthRequest | Kind::FailoverAuthAck | Kind::MfStart => Body::Empty,
    };

    if r.remaining() > 0 {
        return Err(BusError::TrailingBytes(r.remaining()));
    }
    Ok(Message { header, body })
}

/// Reads one frame: at most MAX_FRAME bytes, into `buf` (reused). Ok(None) on clean EOF
/// between frames; EOF inside a frame is [`BusError::Truncated`].
///
/// `buf` belongs to the link: pass the same one on every call, and an empty one for a new
/// link. It holds the bytes of the frame being read, which makes this cancellation safe: a
/// call dropped halfway (a `select!` whose timer fired) leaves what it read in `buf`, and the
/// next call carries on from there. Nothing past the current frame is read, and the length
/// prefix is checked before `buf` grows, so a peer cannot make it hold more than
/// [`MAX_FRAME`].
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Message>, BusError> {
    loop {
        let want = match Reader::new(buf).array("prefix") {
            Ok(prefix) => match check_prefix(prefix) {
                Ok(len) => len,
                Err(e) => {
                    buf.clear();
                    return Err(e);
                }
            },
            Err(_) => PREFIX_LEN,
        };
        // Only ever read up to `want`, so at this point `buf` is exactly one frame.
        if buf.len() >= want {
            let msg = decode(buf);
            buf.clear();
            return msg.map(Some);
        }
        let need = want - buf.len();
        buf.reserve_exact(need);
        // `read_buf` is cancellation safe: what it read is in `buf` once it returns.
        if r.read_buf(&mut (&mut *buf).limit(need)).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            buf.clear();
            return Err(BusError::Truncated { field: "frame" });
        }
    }
}

/// Encodes and writes one frame, then flushes (bus messages are few, and a PING held back in
/// a buffer is a node that looks dead).
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), BusError> {
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// The fields of a frame, read through the crate's bounds-checked [`Cursor`], with the field
/// being read named in every error.
struct Reader<'a>(Cursor<'a>);

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Reader<'a> {
        Reader(Cursor::new(input))
    }

    fn remaining(&self) -> usize {
        self.0.remaining()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BusError> {
        self.0.take(n).map_err(|_| BusError::Truncated { field })
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BusError> {
        self.0.array().map_err(|_| BusError::Truncated { field })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, BusError> {
        self.0.u8().map_err(|_| BusError::Truncated { field })
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, BusError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, BusError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, BusError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn flags(&mut self, field: &'static str) -> Result<NodeFlags, BusError> {
        flags_from_bits(self.u16(field)?)
    }

    fn id(&mut self, field: &'static str) -> Result<NodeId, BusError> {
        let bytes = self.take(ID_LEN, field)?;
        if !is_node_id(bytes) {
            return Err(BusError::BadNodeId { field });
        }
        // Hex digits are ASCII, so this cannot fail; mapped rather than unwrapped all the same.
        String::from_utf8(bytes.to_vec()).map_err(|_| BusError::BadNodeId { field })
    }

    fn optional_id(&mut self, field: &'static str) -> Result<Option<NodeId>, BusError> {
        match self.u8(field)? {
            0 => Ok(None),
            n if usize::from(n) == ID_LEN => self.id(field).map(Some),
            _ => Err(BusError::BadNodeId { field }),
        }
    }

    fn ip(&mut self, field: &'static str) -> Result<String, BusError> {
        let len = usize::from(self.u8(field)?);
        if len > MAX_IP_LEN {
            return Err(BusError::TooLong {
                field,
                len,
                max: MAX_IP_LEN,
            });
        }
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BusError::BadText { field })
    }

    fn blob(&mut self, field: &'static str) -> Result<Vec<u8>, BusError> {
        let len = self.u32(field)?;
        match usize::try_from(len) {
            Ok(len) if len <= MAX_PUBLISH_LEN => Ok(self.take(len, field)?.to_vec()),
            _ => Err(BusError::TooLong {
                field,
                len: len as usize,
                max: MAX_PUBLISH_LEN,
            }),
        }
    }

    fn slots(&mut self, field: &'static str) -> Result<SlotSet, BusError> {
        let bytes = self.take(SLOTS_LEN, field)?;
        SlotSet::from_bytes(bytes).ok_or(BusError::Truncated { field })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tokio::io::ReadBuf;

    use super::*;

    fn id(n: u8) -> NodeId {
        format!("{:040x}", u128::from(n) * 0x0123_4567_89ab_cdef + 0xfeed)
    }

    fn slots(ranges: &[(u16, u16)]) -> SlotSet {
        let mut s = SlotSet::default();
        for &(a, b) in ranges {
            (a..=b).for_each(|slot| s.insert(slot));
        }
        s
    }

    fn header(kind: Kind) -> Header {
        Header {
            kind,
            sender: id(1),
            current_epoch: 7,
            config_epoch: 3,
            repl_offset: 123_456_789,
            flags: NodeFlags {
                myself: true,
                primary: true,
                ..NodeFlags::default()
            },
            mflags: MF_PAUSED,
            primary: None,
            ip: "127.0.0.1".into(),
            port: 7000,
            cport: 17000,
            slots: slots(&[(0, 5460), (10000, 10000), (16383, 16383)]),
            shard_id: id(9),
        }
    }

    fn gossip(n: u8, ip: &str) -> Gossip {
        Gossip {
            id: id(n),
            ip: ip.into(),
            port: 7000 + u16::from(n),
            cport: 17000 + u16::from(n),
            flags: NodeFlags {
                replica: n.is_multiple_of(2),
                primary: !n.is_multiple_of(2),
                pfail: n.is_multiple_of(3),
                ..NodeFlags::default()
            },
            ping_sent: u64::from(n) * 1000,
            pong_received: 1_700_000_000_000 + u64::from(n),
        }
    }

    /// One message of every kind, with the header varied: primary Some/None, empty ip, empty
    /// shard id, every flag, the longest ip.
    fn samples() -> Vec<Message> {
        let mut replica = header(Kind::Pong);
        replica.flags = NodeFlags {
            replica: true,
            ..NodeFlags::default()
        };
        replica.primary = Some(id(2));
        replica.slots = SlotSet::default();
        replica.ip = String::new();

        let mut all_flags = header(Kind::Meet);
        all_flags.flags = flags_from_bits(FLAGS_KNOWN).unwrap();
        // The longest textual address there is.
        all_flags.ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into();
        assert_eq!(all_flags.ip.len(), 45);
        all_flags.shard_id = String::new();
        all_flags.current_epoch = u64::MAX;

        let mut full = SlotSet::default();
        (0..SLOT_COUNT as u16).for_each(|s| full.insert(s));

        vec![
            Message {
                header: header(Kind::Ping),
                body: Body::Gossip(vec![gossip(2, "10.0.0.2"), gossip(3, ""), gossip(4, "::1")]),
            },
            Message {
                header: replica,
                body: Body::Gossip(Vec::new()),
            },
            Message {
                header: all_flags,
                body: Body::Gossip((2..60).map(|n| gossip(n, "192.168.1.1")).collect()),
            },
            Message {
                header: header(Kind::Fail),
                body: Body::Fail { id: id(5) },
            },
            Message {
                header: header(Kind::Update),
                body: Body::Update {
                    id: id(6),
                    config_epoch: 42,
                    slots: full,
                },
            },
            Message {
                header: header(Kind::Publish),
                body: Body::Publish {
                    channel: b"news".to_vec(),
                    message: (0..=255).collect(),
                },
            },
            Message {
                header: header(Kind::PublishShard),
                body: Body::Publish {
                    channel: b"{user1}:events".to_vec(),
                    message: Vec::new(),
                },
            },
            Message {
                header: header(Kind::FailoverAuthRequest),
                body: Body::Empty,
            },
            Message {
                header: header(Kind::FailoverAuthAck),
                body: Body::Empty,
            },
            Message {
                header: header(Kind::MfStart),
                body: Body::Empty,
            },
        ]
    }

    fn minimal() -> Message {
        let mut h = header(Kind::MfStart);
        h.ip = String::new();
        h.shard_id = String::new();
        Message {
            header: h,
            body: Body::Empty,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let samples = samples();
        for kind in Kind::ALL {
            assert!(samples.iter().any(|m| m.header.kind == kind), "{kind:?}");
            assert_eq!(Kind::from_code(kind.code()), Some(kind));
        }
        for msg in &samples {
            let frame = encode(msg).unwrap();
            assert_eq!(&frame[..4], b"LWCB");
            assert_eq!(frame[4..6], VERSION.to_be_bytes());
            assert_eq!(frame[6..10], (frame.len() as u32).to_be_bytes());
            assert_eq!(&decode(&frame).unwrap(), msg);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(encode(&minimal()).unwrap().len(), MIN_FRAME);
        // Header: 10 prefix + 1 kind + 40 sender + 24 epochs/offset + 2 flags + 1 primary (none)
        // + 1+9 ip + 4 ports + 2048 slots + 1+40 shard id = 2181. Gossip: 2 count, then
        // 40 id + 1+len ip + 6 ports/flags + 16 times per entry.
        let ping = encode(&samples()[0]).unwrap();
        assert_eq!(ping.len(), 2181 + 2 + (63 + 8) + 63 + (63 + 3));
        let typical = Message {
            header: header(Kind::Ping),
            body: Body::Gossip((2..5).map(|n| gossip(n, "127.0.0.1")).collect()),
        };
        assert_eq!(encode(&typical).unwrap().len(), 2181 + 2 + 3 * 72);
    }

    #[test]
    fn the_largest_messages_fit() {
        let mut h = header(Kind::Ping);
        h.ip = "x".repeat(MAX_IP_LEN);
        h.primary = Some(id(3));
        let gossip_max = Message {
            header: h.clone(),
            body: Body::Gossip(
                (0..MAX_GOSSIP)
                    .map(|n| gossip((n % 250) as u8, &"y".repeat(MAX_IP_LEN)))
                    .collect(),
            ),
        };
        h.kind = Kind::Publish;
        let publish_max = Message {
            header: h,
            body: Body::Publish {
                channel: vec![b'c'; MAX_PUBLISH_LEN],
                message: vec![b'm'; MAX_PUBLISH_LEN],
            },
        };
        for msg in [gossip_max, publish_max] {
            let frame = encode(&msg).unwrap();
            assert!(frame.len() <= MAX_FRAME, "{}", frame.len());
            assert_eq!(decode(&frame).unwrap(), msg);
        }
    }

    #[test]
    fn encode_refuses_what_decode_would() {
        let mut m = samples()[0].clone();
        m.body = Body::Empty;
        assert!(matches!(
            encode(&m),
            Err(BusError::KindMismatch {
                kind: Kind::Ping,
                body: "empty"
            })
        ));

        let mut m = samples()[7].clone();
        m.header.sender = id(1).to_uppercase();
        assert!(matches!(
            encode(&m),
            Err(BusError::BadNodeId { field: "sender" })
        ));
        m.header.sender = id(1)[..39].to_string();
        assert!(matches!(encode(&m), Err(BusError::BadNodeId { .. })));

        let mut m = samples()[7].clone();
        m.header.shard_id = "abc".into();
        assert!(matches!(
            encode(&m),
            Err(BusError::BadNodeId { field: "shard_id" })
        ));

        let mut m = samples()[7].clone();
        m.header.ip = "x".repeat(MAX_IP_LEN + 1);
        assert!(matches!(
            encode(&m),
            Err(BusError::TooLong { field: "ip", .. })
        ));

        let mut m = samples()[0].clone();
        m.body = Body::Gossip(vec![gossip(2, ""); MAX_GOSSIP + 1]);
        assert!(matches!(
            encode(&m),
            Err(BusError::TooLong {
                field: "gossip",
                ..
            })
        ));

        let mut m = samples()[5].clone();
        m.body = Body::Publish {
            channel: b"c".to_vec(),
            message: vec![0; MAX_PUBLISH_LEN + 1],
        };
        assert!(matches!(
            encode(&m),
            Err(BusError::TooLong {
                field: "message",
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for msg in samples() {
            let frame = encode(&msg).unwrap();
            for n in 0..frame.len() {
                assert!(
                    matches!(decode(&frame[..n]), Err(BusError::Truncated { .. })),
                    "{:?} cut at {n}",
                    msg.header.kind
                );
            }
        }
    }

    #[test]
    fn every_truncated_stream_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let frame = encode(&samples()[0]).unwrap();
        let mut buf = Vec::new();
        rt.block_on(async {
            let mut empty: &[u8] = &[];
            assert!(read_message(&mut empty, &mut buf).await.unwrap().is_none());
            for n in 1..frame.len() {
                let mut r = Trickle::new(frame[..n].to_vec(), n as u64);
                let got = read_message(&mut r, &mut buf).await;
                assert!(
                    matches!(got, Err(BusError::Truncated { field: "frame" })),
                    "cut at {n}: {got:?}"
                );
            }
        });
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let frame = encode(&samples()[3]).unwrap();
        let mut longer = frame.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(BusError::TrailingBytes(1))));
        // The length prefix owning up to the extra byte does not make it part of the message.
        let len = longer.len() as u32;
        longer[6..10].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode(&longer), Err(BusError::TrailingBytes(1))));
    }

    #[test]
    fn bad_prefix_and_fields() {
        let frame = encode(&samples()[0]).unwrap();
        let patched = |at: usize, bytes: &[u8]| {
            let mut f = frame.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            decode(&f)
        };
        assert!(matches!(patched(0, b"LWCC"), Err(BusError::BadMagic(m)) if &m == b"LWCC"));
        assert!(matches!(
            patched(4, &2u16.to_be_bytes()),
            Err(BusError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            patched(6, &u32::MAX.to_be_bytes()),
            Err(BusError::FrameTooLarge(n)) if n == u64::from(u32::MAX)
        ));
        assert!(matches!(
            patched(6, &(MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(BusError::FrameTooLarge(_))
        ));
        assert!(matches!(
            patched(6, &5u32.to_be_bytes()),
            Err(BusError::FrameTooShort(5))
        ));
        assert!(matches!(patched(10, &[0]), Err(BusError::BadKind(0))));
        assert!(matches!(patched(10, &[11]), Err(BusError::BadKind(11))));
        // A kind that expects another body: FAIL reads an id where the gossip count is.
        assert!(patched(10, &[Kind::Fail.code()]).is_err());
        assert!(matches!(
            patched(11, b"G"),
            Err(BusError::BadNodeId { field: "sender" })
        ));
        assert!(matches!(
            patched(11, b"A"),
            Err(BusError::BadNodeId { field: "sender" })
        ));
        // flags: after prefix, kind, sender and three u64s.
        let flags_at = PREFIX_LEN + 1 + ID_LEN + 24;
        // Node bits past the known ones, and message-flag bits past the known ones.
        assert!(matches!(
            patched(flags_at, &0x0400u16.to_be_bytes()),
            Err(BusError::BadFlags(0x0400))
        ));
        assert!(matches!(
            patched(flags_at, &0xff00u16.to_be_bytes()),
            Err(BusError::BadFlags(_))
        ));
        // primary: a length byte that is neither 0 nor 40.
        assert!(matches!(
            patched(flags_at + 2, &[39]),
            Err(BusError::BadNodeId { field: "primary" })
        ));
        // ip: over the bound, then not UTF-8.
        let ip_at = flags_at + 3;
        assert!(matches!(
            patched(ip_at, &[47]),
            Err(BusError::TooLong { field: "ip", .. })
        ));
        assert!(matches!(
            patched(ip_at + 1, &[0xff]),
            Err(BusError::BadText { field: "ip" })
        ));
        // The gossip count, after the header (ip "127.0.0.1" and a shard id).
        let count_at = ip_at + 1 + 9 + 4 + SLOTS_LEN + 1 + ID_LEN;
        assert_eq!(frame[count_at..count_at + 2], 3u16.to_be_bytes());
        assert!(matches!(
            patched(count_at, &1001u16.to_be_bytes()),
            Err(BusError::TooLong {
                field: "gossip",
                ..
            })
        ));
        assert!(matches!(
            patched(count_at, &4u16.to_be_bytes()),
            Err(BusError::Truncated { .. })
        ));
        assert!(matches!(
            patched(count_at, &2u16.to_be_bytes()),
            Err(BusError::TrailingBytes(_))
        ));

        // A PUBLISH channel length over the bound.
        let publish = encode(&samples()[5]).unwrap();
        let channel_at = publish.len() - (4 + 4 + 4 + 256);
        let mut f = publish.clone();
        f[channel_at..channel_at + 4].copy_from_slice(&(MAX_PUBLISH_LEN as u32 + 1).to_be_bytes());
        assert!(matches!(
            decode(&f),
            Err(BusError::TooLong {
                field: "channel",
                ..
            })
        ));
    }

    /// Random corruption never panics, and whatever still decodes is canonical: it encodes back
    /// to the very same bytes.
    #[test]
    fn random_byte_flips_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x4c57_4342);
        let frames: Vec<Vec<u8>> = samples().iter().map(|m| encode(m).unwrap()).collect();
        let mut decoded = 0;
        for round in 0..20_000 {
            let mut f = frames[round % frames.len()].clone();
            for _ in 0..rng.random_range(1..=4) {
                let at = if rng.random_bool(0.5) {
                    // Favor the prefix, the kind and the length bytes, where the structure is.
                    rng.random_range(0..f.len().min(120))
                } else {
                    rng.random_range(0..f.len())
                };
                f[at] = if rng.random_bool(0.5) {
                    f[at] ^ (1 << rng.random_range(0..8))
                } else {
                    rng.random()
                };
            }
            if rng.random_bool(0.1) {
                f.truncate(rng.random_range(0..=f.len()));
            }
            if let Ok(msg) = decode(&f) {
                decoded += 1;
                assert_eq!(encode(&msg).unwrap(), f);
            }
        }
        // Flips inside the slot bitmap, epochs and payloads are still valid messages.
        assert!(decoded > 1000, "{decoded}");
    }

    /// Yields its bytes 1 to 7 at a time; a stuttering one is not ready every other poll.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        rng: StdRng,
        stutter: bool,
        pending_next: bool,
    }

    impl Trickle {
        fn new(data: Vec<u8>, seed: u64) -> Trickle {
            Trickle {
                data,
                pos: 0,
                rng: StdRng::seed_from_u64(seed),
                stutter: false,
                pending_next: false,
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            if this.stutter {
                this.pending_next = !this.pending_next;
                if this.pending_next {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let n = this
                .rng
                .random_range(1..=7)
                .min(buf.remaining())
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_split_at_odd_boundaries() {
        let msgs = samples();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        for seed in 0..20 {
            let mut r = Trickle::new(stream.clone(), seed);
            let mut buf = Vec::new();
            for msg in &msgs {
                assert_eq!(&read_message(&mut r, &mut buf).await.unwrap().unwrap(), msg);
            }
            assert!(read_message(&mut r, &mut buf).await.unwrap().is_none());
            assert!(read_message(&mut r, &mut buf).await.unwrap().is_none());
        }
    }

    /// The bus races `read_message` against its ping timer and outbox in a `select!`: a read
    /// dropped in the middle of a frame must lose nothing.
    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let msgs = samples();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut r = Trickle::new(stream, 3);
        r.stutter = true;
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut cancelled = 0;
        loop {
            tokio::select! {
                biased;
                read = read_message(&mut r, &mut buf) => match read.unwrap() {
                    Some(m) => got.push(m),
                    None => break,
                },
                // Ready on its second poll: after the read has taken one chunk and stalled.
                _ = tokio::task::yield_now() => cancelled += 1,
            }
        }
        assert_eq!(got, msgs);
        assert!(cancelled > 1000, "{cancelled}");
    }

    #[tokio::test]
    async fn write_then_read_over_a_pipe() {
        let msgs = samples();
        let (mut a, mut b) = tokio::io::duplex(64);
        let sent = msgs.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                write_message(&mut a, m).await.unwrap();
            }
        });
        let mut buf = Vec::new();
        for msg in &msgs {
            assert_eq!(&read_message(&mut b, &mut buf).await.unwrap().unwrap(), msg);
        }
        writer.await.unwrap();
        assert!(read_message(&mut b, &mut buf).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn write_refuses_an_invalid_message_and_sends_nothing() {
        let mut m = samples()[7].clone();
        m.body = Body::Gossip(Vec::new());
        let mut out = Vec::new();
        assert!(matches!(
            write_message(&mut out, &m).await,
            Err(BusError::KindMismatch { .. })
        ));
        assert!(out.is_empty());
    }

    /// A peer announcing a huge frame, then sending bytes forever.
    struct Endless {
        prefix: Vec<u8>,
        served: usize,
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let n = buf.remaining().min(3);
            for _ in 0..n {
                let b = this.prefix.get(this.served).copied().unwrap_or(0xab);
                buf.put_slice(&[b]);
                this.served += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_the_body() {
        for len in [u32::MAX, MAX_FRAME as u32 + 1] {
            let mut prefix = MAGIC.to_vec();
            prefix.extend_from_slice(&VERSION.to_be_bytes());
            prefix.extend_from_slice(&len.to_be_bytes());
            let mut r = Endless { prefix, served: 0 };
            let mut buf = Vec::new();
            let got = read_message(&mut r, &mut buf).await;
            assert!(matches!(got, Err(BusError::FrameTooLarge(n)) if n == u64::from(len)));
            assert_eq!(r.served, PREFIX_LEN);
            assert!(buf.capacity() < 1024, "{}", buf.capacity());
        }
    }

    #[tokio::test]
    async fn a_bad_prefix_is_refused_on_a_stream() {
        let frame = encode(&samples()[4]).unwrap();
        let mut bad_magic = frame.clone();
        bad_magic[0] = b'X';
        let mut bad_version = frame.clone();
        bad_version[5] = 9;
        let mut buf = Vec::new();
        let mut r = Trickle::new(bad_magic, 1);
        assert!(matches!(
            read_message(&mut r, &mut buf).await,
            Err(BusError::BadMagic(_))
        ));
        let mut r = Trickle::new(bad_version, 2);
        assert!(matches!(
            read_message(&mut r, &mut buf).await,
            Err(BusError::UnsupportedVersion(9))
        ));
    }

    #[tokio::test]
    async fn random_streams_never_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        let valid = encode(&samples()[3]).unwrap();
        let mut buf = Vec::new();
        for round in 0..500 {
            // Garbage after a valid prefix, so the length and the fields get exercised.
            let mut data = valid[..PREFIX_LEN].to_vec();
            let extra = rng.random_range(0..3 * MIN_FRAME);
            data.extend((0..extra).map(|_| rng.random::<u8>()));
            if round % 2 == 0 {
                let len = rng.random_range(0..=MIN_FRAME as u32 + 200);
                data[6..10].copy_from_slice(&len.to_be_bytes());
            }
            let mut r = Trickle::new(data, round);
            while let Ok(Some(_)) = read_message(&mut r, &mut buf).await {}
        }
    }
}
