//! Sending a command to the node that owns its slot, following redirects, and fanning out.
//!
//! `forward` is the data path for every keyed command: load the map, pick the slot's primary,
//! send on a shared pipelined connection, and on `MOVED` patch the map and resend, on `ASK`
//! resend to the target preceded by `ASKING`, on `TRYAGAIN`/`CLUSTERDOWN`/`LOADING` wait and
//! resend until a deadline. A request that may have reached a node is never resent if it is a
//! write: the client gets an error instead of a possible double apply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use lagwise_shared::topology::NodeAddr;

use crate::backend::{BackendError, Pool};
use crate::reply::{self, Protocol, Redirect};
use crate::topology::TopologyHandle;

/// Redirects followed for one request before giving up.
const MAX_REDIRECTS: u32 = 8;

pub struct Proxy {
    pub topology: Arc<TopologyHandle>,
    pub pool: Arc<Pool>,
    /// How long a request may keep retrying through redirects, failovers and TRYAGAIN.
    pub retry_deadline: Duration,
    /// (username, password) for connections outside the pool (subscription links).
    pub backend_auth: Option<(Option<String>, String)>,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((10u64 << attempt.min(5)).min(200))
}

impl Proxy {
    /// Sends `payload` (one command) to the owner of `slot` and returns its reply, redirects
    /// followed. `write` commands are not resent after they may have been delivered.
    pub async fn forward(
        &self,
        slot: u16,
        payload: Bytes,
        protocol: Protocol,
        lane: usize,
        write: bool,
    ) -> Bytes {
        let deadline = Instant::now() + self.retry_deadline;
        let mut ask: Option<NodeAddr> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (addr, asking) = match ask.take() {
                Some(a) => (a, true),
                None => match self
                    .topology
                    .load()
                    .and_then(|t| t.primary_of_slot(slot).cloned())
                {
                    Some(a) => (a, false),
                    None => {
                        self.topology.request_refresh();
                        if Instant::now() < deadline {
                            tokio::time::sleep(backoff(attempt)).await;
                            continue;
                        }
                        return reply::error("CLUSTERDOWN Hash slot not served");
                    }
                },
            };
            let result = match self.pool.get(&addr, protocol, false, lane).await {
                Ok(conn) if asking => {
                    let mut both = BytesMut::with_capacity(payload.len() + 20);
                    reply::encode_into(&mut both, &[b"ASKING"]);
                    both.extend_from_slice(&payload);
                    conn.request(both.freeze(), 2)
                        .await
                        .map(|r| last_reply(&r, protocol))
                }
                Ok(conn) => conn.request(payload.clone(), 1).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => match reply::redirect(&r) {
                    Some(Redirect::Moved { slot: s, addr }) if attempt < MAX_REDIRECTS => {
                        self.topology.apply_moved(s, &NodeAddr(addr));
                    }
                    Some(Redirect::Ask { addr, .. }) if attempt < MAX_REDIRECTS => {
                        ask = Some(NodeAddr(addr));
                    }
                    _ if reply::is_transient(&r) && Instant::now() < deadline => {
                        if r.starts_with(b"-CLUSTERDOWN") {
                            self.topology.request_refresh();
                        }
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    _ => return r,
                },
                Err(e) => {
                    self.topology.request_refresh();
                    let may_retry = e.not_sent() || !write;
                    if may_retry && Instant::now() < deadline {
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    return backend_error(&e);
                }
            }
        }
    }

    /// Sends the same command to every primary; the replies in shard order, or the first
    /// error.
    pub async fn to_all_primaries(
        &self,
        payload: Bytes,
        protocol: Protocol,
        lane: usize,
    ) -> Result<Vec<Bytes>, Bytes> {
        let Some(topology) = self.topology.load() else {
            return Err(reply::error(
                "CLUSTERDOWN The proxy has not learned the cluster topology yet",
            ));
        };
        let sends = topology.primaries().map(|addr| {
            let payload = payload.clone();
            async move {
                let conn = self
                    .pool
                    .get(addr, protocol, false, lane)
                    .await
                    .map_err(|e| backend_error(&e))?;
                conn.request(payload, 1)
                    .await
                    .map_err(|e| backend_error(&e))
            }
        });
        let replies = futures::future::join_all(sends).await;
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            let r = r?;
            if r.first() == Some(&b'-') {
                return Err(r);
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Any reachable primary (for commands whose answer every node gives alike: COMMAND).
    pub async fn to_any(&self, payload: Bytes, protocol: Protocol, lane: usize) -> Bytes {
        let Some(topology) = self.topology.load() else {
            return reply::error("CLUSTERDOWN The proxy has not learned the cluster topology yet");
        };
        let mut last = reply::error("CLUSTERDOWN no node reachable");
        for addr in topology.primaries() {
            match self.pool.get(addr, protocol, false, lane).await {
                Ok(conn) => match conn.request(payload.clone(), 1).await {
                    Ok(r) => return r,
                    Err(e) => last = backend_error(&e),
                },
                Err(e) => last = backend_error(&e),
            }
        }
        last
    }

    /// Runs one command on a connection of its own to the slot's owner (blocking commands
    /// must not hold up a shared pipeline), following MOVED/ASK.
    pub async fn dedicated(
        &self,
        slot: u16,
        payload: Bytes,
        protocol: Protocol,
        timeout: Option<Duration>,
    ) -> Bytes {
        let mut ask: Option<NodeAddr> = None;
        for _ in 0..MAX_REDIRECTS {
            let (addr, asking) = match ask.take() {
                Some(a) => (a, true),
                None => match self
                    .topology
                    .load()
                    .and_then(|t| t.primary_of_slot(slot).cloned())
                {
                    Some(a) => (a, false),
                    None => return reply::error("CLUSTERDOWN Hash slot not served"),
                },
            };
            let conn = match self.pool.dedicated(&addr, protocol).await {
                Ok(c) => c,
                Err(e) => return backend_error(&e),
            };
            let send = if asking {
                let mut both = BytesMut::new();
                reply::encode_into(&mut both, &[b"ASKING"]);
                both.extend_from_slice(&payload);
                conn.request(both.freeze(), 2)
            } else {
                conn.request(payload.clone(), 1)
            };
            let send = async move {
                send.await
                    .map(|r| if asking { last_reply(&r, protocol) } else { r })
            };
            // The client's own timeout plus a margin: the server answers at its timeout.
            let waited = match timeout {
                Some(t) => tokio::time::timeout(t + Duration::from_secs(5), send)
                    .await
                    .ok(),
                None => Some(send.await),
            };
            let r = match waited {
                Some(Ok(r)) => r,
                Some(Err(e)) => return backend_error(&e),
                None => return reply::error("ERR lagwise: backend did not answer in time"),
            };
            match reply::redirect(&r) {
                Some(Redirect::Moved { slot: s, addr }) => {
                    self.topology.apply_moved(s, &NodeAddr(addr))
                }
                Some(Redirect::Ask { addr, .. }) => ask = Some(NodeAddr(addr)),
                None => return r,
            }
        }
        reply::error("ERR lagwise: too many redirects")
    }
}

/// The last of several replies read back to back.
pub fn last_reply(replies: &Bytes, protocol: Protocol) -> Bytes {
    split_replies(replies, protocol).pop().unwrap_or_default()
}

/// Several replies read back to back, one by one.
fn split_replies(replies: &Bytes, protocol: Protocol) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < replies.len() {
        match reply::frame_len(&replies[pos..], protocol) {
            Ok(Some(n)) => {
                out.push(replies.slice(pos..pos + n));
                pos += n;
            }
            _ => break,
        }
    }
    out
}

impl Proxy {
    /// Sends a MULTI ... EXEC block (`replies` replies) to the owner of `slot` as one
    /// contiguous write, and returns EXEC's reply. If a queued command was redirected (the
    /// slot moved), nothing ran (EXECABORT): the map is fixed and the block sent again.
    pub async fn forward_block(
        &self,
        slot: u16,
        payload: Bytes,
        replies: usize,
        protocol: Protocol,
        lane: usize,
    ) -> Bytes {
        for attempt in 1..=MAX_REDIRECTS {
            let Some(addr) = self
                .topology
                .load()
                .and_then(|t| t.primary_of_slot(slot).cloned())
            else {
                self.topology.request_refresh();
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            };
            let all = match self.pool.get(&addr, protocol, false, lane).await {
                Ok(conn) => match conn.request(payload.clone(), replies).await {
                    Ok(r) => r,
                    Err(e) => return backend_error(&e),
                },
                Err(e) => {
                    self.topology.request_refresh();
                    if e.not_sent() {
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    return backend_error(&e);
                }
            };
            let parts = split_replies(&all, protocol);
            let redirected = parts.iter().find_map(|r| reply::redirect(r));
            match redirected {
                Some(Redirect::Moved { slot: s, addr: to }) => {
                    self.topology.apply_moved(s, &NodeAddr(to));
                }
                // The slot is being migrated: wait for the migration to move on.
                Some(Redirect::Ask { .. }) => tokio::time::sleep(backoff(attempt)).await,
                None => {
                    return parts
                        .last()
                        .cloned()
                        .unwrap_or_else(|| reply::error("ERR lagwise: empty EXEC reply"))
                }
            }
        }
        reply::error("ERR lagwise: too many redirects")
    }
}

pub fn backend_error(e: &BackendError) -> Bytes {
    reply::error(&format!("ERR lagwise: {e}"))
}
