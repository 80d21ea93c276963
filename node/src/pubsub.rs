//! Publish/subscribe: who listens to which channel, pattern and shard channel, and delivery.
//!
//! The registry is changed and read only by commands, which run under the keyspace lock, so a
//! PUBLISH is ordered with every other command. Each subscriber has a bounded queue drained by
//! its own connection task; a subscriber whose queue is full is disconnected (Valkey's
//! `client-output-buffer-limit pubsub`), so one slow reader cannot grow the server's memory.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use lagwise_shared::glob;
use lagwise_shared::resp::{Protocol, ReplyWriter};
use tokio::sync::mpsc;

use crate::clients::ClientHandle;

/// Messages a subscriber may have queued before it is cut off.
pub const QUEUE_LIMIT: usize = 8192;

/// One subscribed connection, as the registry knows it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: u64,
    pub protocol: Protocol,
    pub tx: mpsc::Sender<Bytes>,
    pub handle: Arc<ClientHandle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Channel,
    Pattern,
    Shard,
}

#[derive(Debug, Default)]
pub struct PubSub {
    channels: HashMap<Bytes, Vec<Subscriber>>,
    patterns: HashMap<Bytes, Vec<Subscriber>>,
    shard_channels: HashMap<Bytes, Vec<Subscriber>>,
}

/// The three parts of a message push, encoded once per protocol and shared by every receiver.
struct Encoded<'a> {
    parts: [&'a [u8]; 4],
    len: usize,
    resp2: Option<Bytes>,
    resp3: Option<Bytes>,
}

impl Encoded<'_> {
    fn get(&mut self, protocol: Protocol) -> Bytes {
        let slot = match protocol {
            Protocol::Resp2 => &mut self.resp2,
            Protocol::Resp3 => &mut self.resp3,
        };
        slot.get_or_insert_with(|| {
            let mut out = BytesMut::new();
            let mut w = ReplyWriter::new(&mut out, protocol);
            w.push(self.len);
            for p in &self.parts[..self.len] {
                w.bulk(p);
            }
            out.freeze()
        })
        .clone()
    }
}

impl PubSub {
    fn map(&mut self, kind: Kind) -> &mut HashMap<Bytes, Vec<Subscriber>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard_channels,
        }
    }

    pub fn subscribe(&mut self, kind: Kind, name: Bytes, sub: Subscriber) {
        let subs = self.map(kind).entry(name).or_default();
        if !subs.iter().any(|s| s.id == sub.id) {
            subs.push(sub);
        }
    }

    pub fn unsubscribe(&mut self, kind: Kind, name: &[u8], id: u64) {
        let map = self.map(kind);
        if let Some(subs) = map.get_mut(name) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                map.remove(name);
            }
        }
    }

    /// Sends one push to a subscriber; a full queue disconnects it.
    fn deliver(sub: &Subscriber, msg: Bytes) -> bool {
        match sub.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    client = sub.id,
                    "subscriber too slow: queue limit reached, disconnecting"
                );
                sub.handle.kill();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// PUBLISH: delivers to channel and pattern subscribers; returns how many received it.
    pub fn publish(&self, channel: &[u8], message: &[u8]) -> usize {
        let mut n = 0;
        if let Some(subs) = self.channels.get(channel) {
            let mut enc = Encoded {
                parts: [b"message", channel, message, b""],
                len: 3,
                resp2: None,
                resp3: None,
            };
            for s in subs {
                n += Self::deliver(s, enc.get(s.protocol)) as usize;
            }
        }
        for (pattern, subs) in &self.patterns {
            if !glob::matches(pattern, channel, false) {
                continue;
            }
            let mut enc = Encoded {
                parts: [b"pmessage", pattern, channel, message],
                len: 4,
                resp2: None,
                resp3: None,
            };
            for s in subs {
                n += Self::deliver(s, enc.get(s.protocol)) as usize;
            }
        }
        n
    }

    /// SPUBLISH: delivers to shard-channel subscribers.
    pub fn spublish(&self, channel: &[u8], message: &[u8]) -> usize {
        let mut n = 0;
        if let Some(subs) = self.shard_channels.get(channel) {
            let mut enc = Encoded {
                parts: [b"smessage", channel, message, b""],
                len: 3,
                resp2: None,
                resp3: None,
            };
            for s in subs {
                n += Self::deliver(s, enc.get(s.protocol)) as usize;
            }
        }
        n
    }

    /// Active channels (with at least one subscriber) matching `pattern`.
    pub fn active(&self, kind: Kind, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let map = match kind {
            Kind::Channel => &self.channels,
            Kind::Pattern => &self.patterns,
            Kind::Shard => &self.shard_channels,
        };
        map.keys()
            .filter(|c| pattern.is_none_or(|p| glob::matches(p, c, false)))
            .cloned()
            .collect()
    }

    pub fn count(&self, kind: Kind, name: &[u8]) -> usize {
        let map = match kind {
            Kind::Channel => &self.channels,
            Kind::Pattern => &self.patterns,
            Kind::Shard => &self.shard_channels,
        };
        map.get(name).map_or(0, Vec::len)
    }

    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}
