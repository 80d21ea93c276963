//! Commands the shared command table does not know (a module's, a newer server's, a renamed
//! one), learned from the backends' `COMMAND INFO` the first time a client sends one, and
//! routed by the key positions and flags the backend reports.
//!
//! The lookup happens before the command is planned, while the session reads no further
//! requests, so a learned command keeps its place in the connection's order. Both answers are
//! cached: a command the backend does not know either is refused as unknown for a minute
//! before it is asked about again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use redis_protocol::resp2::types::OwnedFrame;

use crate::reply::{encode, Protocol};
use crate::route::Proxy;

/// How long "the backend does not know it either" is believed.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Distinct unknown names remembered; past it the oldest answers are forgotten.
const MAX_NAMES: usize = 1024;

/// What a backend reported about a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub arity: i64,
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub write: bool,
    pub readonly: bool,
    pub blocking: bool,
    pub admin: bool,
    /// Keys are not (only) at the fixed positions.
    pub movable_keys: bool,
}

impl Learned {
    /// Parses one entry of a `COMMAND INFO` reply (None: the backend does not know it).
    fn parse(entry: &OwnedFrame) -> Option<Learned> {
        let OwnedFrame::Array(parts) = entry else {
            return None;
        };
        let int = |i: usize| match parts.get(i) {
            Some(OwnedFrame::Integer(n)) => Some(*n),
            _ => None,
        };
        let flags: Vec<String> = match parts.get(2) {
            Some(OwnedFrame::Array(f)) => f
                .iter()
                .filter_map(|f| match f {
                    OwnedFrame::SimpleString(s) | OwnedFrame::BulkString(s) => {
                        Some(String::from_utf8_lossy(s).to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let has = |f: &str| flags.iter().any(|x| x == f);
        Some(Learned {
            arity: int(1)?,
            first_key: int(3)?,
            last_key: int(4)?,
            step: int(5)?,
            write: has("write"),
            readonly: has("readonly"),
            blocking: has("blocking"),
            admin: has("admin"),
            movable_keys: has("movablekeys"),
        })
    }

    pub fn arity_ok(&self, argc: usize) -> bool {
        lagwise_shared::command_table::arity_allows(self.arity, argc)
    }

    /// The argument positions of the keys, from the fixed positions.
    pub fn key_positions(&self, argc: usize) -> Vec<usize> {
        if self.first_key <= 0 || self.step <= 0 {
            return Vec::new();
        }
        let argc = argc as i64;
        let last = if self.last_key < 0 {
            argc + self.last_key
        } else {
            self.last_key.min(argc - 1)
        };
        (self.first_key..=last)
            .step_by(self.step as usize)
            .map(|p| p as usize)
            .collect()
    }
}

/// A backend's answer about one name (None: it does not know it either), and when.
type Answer = (Option<Learned>, Instant);

#[derive(Default)]
pub struct Catalog {
    known: Mutex<HashMap<Vec<u8>, Answer>>,
}

impl Catalog {
    /// What was learned about `name` (lowercase), if it was asked about and is still valid.
    pub fn get(&self, name: &[u8]) -> Option<Option<Learned>> {
        let known = self.known.lock();
        let (learned, at) = known.get(name)?;
        if learned.is_none() && at.elapsed() > NEGATIVE_TTL {
            return None;
        }
        Some(learned.clone())
    }

    /// Asks a backend about `name` (lowercase) unless the answer is cached; `lane`: the
    /// asking session's.
    pub async fn learn(&self, proxy: &Proxy, name: &[u8], lane: usize) {
        if self.get(name).is_some() {
            return;
        }
        let reply = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            proxy.to_any(
                encode(&[b"COMMAND" as &[u8], b"INFO", name]),
                Protocol::Resp2,
                lane,
            ),
        )
        .await;
        let learned = match reply {
            Ok(bytes) => match parse_info(&bytes) {
                Ok(l) => l,
                // No answer to believe: ask again next time.
                Err(()) => return,
            },
            Err(_) => return,
        };
        if learned.is_some() {
            tracing::info!(
                command = %String::from_utf8_lossy(name),
                "learned a command from the backends' COMMAND INFO"
            );
        }
        let mut known = self.known.lock();
        if known.len() >= MAX_NAMES {
            known.retain(|_, (l, _)| l.is_some());
            if known.len() >= MAX_NAMES {
                known.clear();
            }
        }
        known.insert(name.to_vec(), (learned, Instant::now()));
    }
}

/// `Ok(None)`: the backend answered that it does not know the command.
fn parse_info(reply: &Bytes) -> Result<Option<Learned>, ()> {
    match redis_protocol::resp2::decode::decode(reply) {
        Ok(Some((OwnedFrame::Array(entries), _))) => match entries.first() {
            Some(OwnedFrame::Null) | None => Ok(None),
            Some(e) => Ok(Learned::parse(e)),
        },
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_info_and_key_positions() {
        let reply = Bytes::from_static(
            b"*1\r\n*10\r\n$6\r\nappend\r\n:3\r\n*3\r\n+write\r\n+denyoom\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n",
        );
        let l = parse_info(&reply).expect("reply").expect("known");
        assert!(l.write && !l.readonly && !l.blocking && !l.movable_keys);
        assert!(l.arity_ok(3) && !l.arity_ok(2));
        assert_eq!(l.key_positions(3), vec![1]);
        let mset_like = Learned {
            arity: -3,
            first_key: 1,
            last_key: -1,
            step: 2,
            ..l
        };
        assert_eq!(mset_like.key_positions(7), vec![1, 3, 5]);
        assert_eq!(parse_info(&Bytes::from_static(b"*1\r\n*-1\r\n")), Ok(None));
        assert_eq!(parse_info(&Bytes::from_static(b"-ERR x\r\n")), Err(()));
    }
}
