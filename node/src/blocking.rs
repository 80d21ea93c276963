//! Clients blocked on keys (BLPOP, BLMOVE, BZPOPMIN, ...), served in FIFO order.
//!
//! A blocking command that finds nothing registers a `Waiter` here and its connection waits
//! outside the lock. Every change to a key with waiters marks the key ready; after the command
//! that changed it (after the whole transaction, for EXEC), `serve_ready` runs the waiters'
//! commands on their behalf, oldest first, under the same lock, and hands each its reply. So
//! a pipelined `RPUSH k x; LPOP k` from one client cannot take the element from a client that
//! was waiting, and chains (BLMOVE into a key another client waits on) resolve in one go.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use lagwise_shared::resp::{Protocol, ReplyWriter};
use tokio::sync::oneshot;

use crate::db::Db;

/// Tries to serve a blocking command now: writes the reply and returns true, or returns false
/// (nothing to take yet). Errors are replies too (WRONGTYPE at the first attempt).
pub type ServeFn =
    fn(&mut Db, &[Bytes], &mut ReplyWriter<'_>, u64) -> Result<bool, crate::cmd::CmdError>;

pub struct Waiter {
    pub client: u64,
    pub keys: Vec<Bytes>,
    pub args: Vec<Bytes>,
    pub protocol: Protocol,
    pub serve: ServeFn,
    /// What the client gets if the timeout passes (or CLIENT UNBLOCK ... TIMEOUT).
    pub timeout_reply: Bytes,
    pub reply: oneshot::Sender<Bytes>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("client", &self.client)
            .field("keys", &self.keys)
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct Blocked {
    /// Per key, the clients waiting on it, oldest first.
    by_key: HashMap<Vec<u8>, VecDeque<u64>>,
    waiters: HashMap<u64, Waiter>,
    /// Keys with waiters that changed since the last `serve_ready`.
    ready: Vec<Vec<u8>>,
    ready_set: HashSet<Vec<u8>>,
}

impl Blocked {
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn block(&mut self, waiter: Waiter) {
        for key in &waiter.keys {
            let queue = self.by_key.entry(key.to_vec()).or_default();
            if !queue.contains(&waiter.client) {
                queue.push_back(waiter.client);
            }
        }
        self.waiters.insert(waiter.client, waiter);
    }

    /// A key changed: if anyone waits on it, it is ready to be looked at.
    pub fn signal(&mut self, key: &[u8]) {
        if self.by_key.contains_key(key) && self.ready_set.insert(key.to_vec()) {
            self.ready.push(key.to_vec());
        }
    }

    /// Removes a client's wait (served, timed out, unblocked, disconnected).
    pub fn remove(&mut self, client: u64) -> Option<Waiter> {
        let waiter = self.waiters.remove(&client)?;
        for key in &waiter.keys {
            if let Some(queue) = self.by_key.get_mut(key.as_ref()) {
                queue.retain(|&c| c != client);
                if queue.is_empty() {
                    self.by_key.remove(key.as_ref());
                }
            }
        }
        Some(waiter)
    }

    fn forget_signals_after(&mut self, len: usize) {
        for key in self.ready.drain(len..) {
            self.ready_set.remove(&key);
        }
    }

    fn take_ready(&mut self) -> Vec<Vec<u8>> {
        self.ready_set.clear();
        std::mem::take(&mut self.ready)
    }

    fn oldest(&self, key: &[u8]) -> Option<(u64, ServeFn, Vec<Bytes>, Protocol)> {
        let id = *self.by_key.get(key)?.front()?;
        let w = self.waiters.get(&id)?;
        Some((id, w.serve, w.args.clone(), w.protocol))
    }
}

/// Serves waiters on keys that changed, oldest first, until no ready key can serve anyone.
pub fn serve_ready(db: &mut Db, now_ms: u64) {
    loop {
        let ready = db.blocked.take_ready();
        if ready.is_empty() {
            return;
        }
        for key in ready {
            while let Some((id, serve, args, protocol)) = db.blocked.oldest(&key) {
                let signals_before = db.blocked.ready.len();
                let mut out = BytesMut::new();
                let served = {
                    let mut w = ReplyWriter::new(&mut out, protocol);
                    // A key of the wrong type keeps its waiters waiting, as in Valkey.
                    matches!(serve(db, &args, &mut w, now_ms), Ok(true))
                };
                if !served {
                    // A failed attempt changed nothing; the keys it looked at are not news.
                    db.blocked.forget_signals_after(signals_before);
                    break;
                }
                if let Some(w) = db.blocked.remove(id) {
                    let _ = w.reply.send(out.freeze());
                }
            }
        }
    }
}

/// Parses a blocking timeout in seconds (a double, as Valkey reads it) into milliseconds;
/// 0 means forever.
pub fn parse_timeout(arg: &[u8]) -> Result<u64, crate::cmd::CmdError> {
    let secs = crate::cmd::parse_f64(arg)
        .ok()
        .filter(|s| s.is_finite())
        .ok_or(crate::cmd::CmdError::from(
            "ERR timeout is not a float or out of range",
        ))?;
    if secs < 0.0 {
        return Err("ERR timeout is negative".into());
    }
    Ok((secs * 1000.0).ceil() as u64)
}

/// The reply for a timed-out wait, in the client's protocol.
pub fn timeout_reply(protocol: Protocol, null_array: bool) -> Bytes {
    let mut out = BytesMut::new();
    let mut w = ReplyWriter::new(&mut out, protocol);
    if null_array {
        w.null_array();
    } else {
        w.null();
    }
    out.freeze()
}

/// Runs a blocking command: serves it now if it can, else registers the client as a waiter
/// on `keys` and tells the connection to wait (or, inside EXEC, replies as if timed out at
/// once, as Valkey does). `null_array` picks the timeout reply's shape.
pub fn serve_or_wait(
    ctx: &mut crate::cmd::Ctx<'_, '_>,
    args: &[Bytes],
    keys: &[Bytes],
    timeout_ms: u64,
    serve: ServeFn,
    null_array: bool,
) -> crate::cmd::CmdResult {
    if serve(ctx.db, args, ctx.out, ctx.now_ms)? {
        return Ok(());
    }
    let timeout_reply = timeout_reply(ctx.client.protocol, null_array);
    if ctx.client.in_exec {
        ctx.out.out.extend_from_slice(&timeout_reply);
        return Ok(());
    }
    let (tx, rx) = oneshot::channel();
    ctx.db.blocked.block(Waiter {
        client: ctx.client.id,
        keys: keys.to_vec(),
        args: args.to_vec(),
        protocol: ctx.client.protocol,
        serve,
        timeout_reply,
        reply: tx,
    });
    let deadline = (timeout_ms > 0)
        .then(|| tokio::time::Instant::now() + std::time::Duration::from_millis(timeout_ms));
    ctx.outcome = crate::cmd::Outcome::Block(crate::cmd::Blocking {
        reply: rx,
        deadline,
    });
    Ok(())
}
