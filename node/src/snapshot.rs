//! Consistent snapshots of a keyspace that keeps serving: SAVE, BGSAVE and full syncs.
//!
//! Valkey forks and lets the kernel copy pages on write. We copy slots on write instead: a
//! snapshot begins under the keyspace lock at one moment, and from then on each slot is
//! written to the RDB stream either by the snapshot's own walk (slot by slot, a bounded
//! amount per hold of the lock) or, if a command is about to change it first, by that
//! command just before the change. Either way a slot is written as it was at the moment the
//! snapshot began, and each slot exactly once. The cost of a change is paid once per slot,
//! and clients never wait for the whole keyspace to be written.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use crate::db::SlotTable;
use crate::rdb::file::{Aux, RdbEncoder};
use crate::server::Server;
use crate::value::Value;
use lagwise_shared::slot::SLOT_COUNT;

/// How much of a snapshot is written per hold of the lock.
pub const STEP_BYTES: usize = 256 * 1024;

/// A snapshot in progress, held by the keyspace.
pub struct Capture {
    encoder: RdbEncoder,
    /// One bit per slot: already written.
    captured: Box<[u64]>,
    /// Where the walk resumes.
    next: usize,
    /// The keyspace as it was, if it was flushed or replaced while the snapshot ran.
    detached: Option<Box<[SlotTable]>>,
}

impl Capture {
    pub fn new(aux: &Aux<'_>) -> Box<Capture> {
        Box::new(Capture {
            encoder: RdbEncoder::new(aux),
            captured: vec![0u64; SLOT_COUNT / 64].into_boxed_slice(),
            next: 0,
            detached: None,
        })
    }

    pub(crate) fn begin(&mut self, keys: u64, volatile: u64) {
        self.encoder.resize_db(keys, volatile);
    }

    fn is_captured(&self, slot: usize) -> bool {
        self.captured[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// Writes `slot` now unless it already is: it is about to change.
    pub(crate) fn before_change(&mut self, slot: u16, live: &SlotTable) {
        self.capture(slot as usize, live);
    }

    fn capture(&mut self, slot: usize, live: &SlotTable) {
        if self.is_captured(slot) {
            return;
        }
        self.captured[slot / 64] |= 1 << (slot % 64);
        let table = match &self.detached {
            Some(old) => &old[slot],
            None => live,
        };
        for e in table.entries() {
            match &e.value {
                Value::Str(s) => self
                    .encoder
                    .string_entry(e.key(), e.expire_at(), s.as_bytes()),
                other => self.encoder.entry(e.key(), e.expire_at(), &other.to_rdb()),
            }
        }
    }

    /// The keyspace is being emptied or replaced: keep the old tables for the slots not
    /// written yet. If that already happened once, the first old keyspace is the right one.
    pub(crate) fn detach(&mut self, old: Box<[SlotTable]>) {
        if self.detached.is_none() {
            self.detached = Some(old);
        } else {
            crate::db::drop_in_background(old);
        }
    }

    /// Walks on until about `budget` bytes are ready; true once every slot is written.
    pub(crate) fn step(&mut self, live: &[SlotTable], budget: usize) -> bool {
        while self.next < SLOT_COUNT && self.encoder.pending() < budget {
            let slot = self.next;
            self.next += 1;
            self.capture(slot, &live[slot]);
        }
        self.next >= SLOT_COUNT
    }

    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.encoder.take()
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        if let Some(old) = self.detached {
            crate::db::drop_in_background(old);
        }
        self.encoder.finish()
    }
}

/// Writes out the snapshot the keyspace is running, piece by piece, handing each piece to
/// `emit` with the lock released. If `emit` fails, the snapshot is abandoned.
pub async fn drive<F, Fut>(server: &Server, mut emit: F) -> std::io::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    loop {
        let (chunk, done) = server.lock_db().snapshot_step(STEP_BYTES);
        if let Err(e) = emit(chunk).await {
            server.lock_db().abort_snapshot();
            return Err(e);
        }
        if done {
            return Ok(());
        }
        // Let clients in between pieces even when `emit` never waits.
        tokio::task::yield_now().await;
    }
}

/// Writes the running snapshot into a new file at `path` (on a blocking thread, fed through
/// a bounded channel so a slow disk slows the snapshot rather than filling memory). Returns
/// the open file and its size; making it durable is the caller's business.
pub async fn to_file(server: &Server, path: PathBuf) -> std::io::Result<(File, u64)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64)> {
        let mut file = File::create(&path)?;
        let mut size = 0u64;
        // An empty chunk marks the end; a sender dropped without one abandons the file.
        while let Ok(chunk) = rx.recv() {
            if chunk.is_empty() {
                return Ok((file, size));
            }
            file.write_all(&chunk)?;
            size += chunk.len() as u64;
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        Err(std::io::Error::other("snapshot abandoned"))
    });
    let fed = drive(server, |chunk| {
        let tx = tx.clone();
        async move {
            if chunk.is_empty() {
                return Ok(());
            }
            tokio::task::spawn_blocking(move || tx.send(chunk))
                .await
                .map_err(std::io::Error::other)?
                .map_err(|_| std::io::Error::other("snapshot writer stopped"))
        }
    })
    .await;
    if fed.is_ok() {
        let _ = tokio::task::spawn_blocking(move || tx.send(Vec::new())).await;
    } else {
        drop(tx);
    }
    let written = writer.await.map_err(std::io::Error::other)?;
    fed?;
    written
}

/// The AUX fields of a snapshot taken now.
pub fn aux<'a>(replid: &'a str, offset: u64, aof_base: bool) -> Aux<'a> {
    Aux {
        redis_ver: crate::cmd::COMPAT_VERSION,
        ctime_secs: crate::server::now_ms() / 1000,
        used_mem: crate::info::used_memory(),
        repl_stream_db: Some(0),
        repl_id: Some(replid),
        repl_offset: Some(offset as i64),
        aof_base,
    }
}
