//! Consistent snapshots of a keyspace that keeps serving: SAVE, BGSAVE and full syncs.
//!
//! Valkey forks and lets the kernel copy pages on write. We capture slots before their first
//! change instead: a snapshot begins under the keyspace lock at one moment, and from then on
//! each slot is captured either by the snapshot's own walk (slot by slot, a bounded amount
//! per hold of the lock) or, if a command is about to change it first, by that command just
//! before the change. A slot is marked captured as it is captured, and never captured again.
//!
//! Capturing a small slot writes it to the RDB stream then and there. A large one (more than
//! [`LARGE_SLOT_KEYS`] keys, or more than [`STEP_BYTES`] of values) would hold the lock for
//! too long, so its entries are set aside instead, in O(1): the slot's table becomes its
//! "frozen" part (`SlotTable::freeze`), and new and changed keys live in a fresh one. The
//! keyspace still reads frozen entries as its own, but never changes one: before a change to
//! a key, the key is moved back to the live part, written to the snapshot first
//! (`Db::before_change_key`). The walk writes the rest a piece per hold of the lock (at most
//! [`STEP_TIME`]), moving each back as it writes it. So every frozen entry is written exactly once, as it was when
//! the snapshot began, and the live part holds only keys written already or new since, which
//! the snapshot must not write. If the slot is dropped meanwhile (a flush, a slot given away),
//! the snapshot keeps what it has yet to write of it.
//!
//! Either way a slot is written as it was at the moment the snapshot began, and each slot
//! exactly once. The cost of a change is paid once per slot (once per key in a large slot),
//! and clients never wait for the whole keyspace, nor a whole large slot, to be written.
//! SAVE, which holds the lock throughout anyway, writes large slots at once.

use std::fs::File;
use std::future::Future;
use std::hash::BuildHasher;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

use crate::db::{Entry, SlotTable};
use crate::rdb::file::{Aux, RdbEncoder};
use crate::server::Server;
use crate::value::Value;
use lagwise_shared::slot::SLOT_COUNT;

/// How much of a snapshot is written per hold of the lock.
pub const STEP_BYTES: usize = 256 * 1024;

/// A slot with more keys than this is written over several holds of the lock, by a writer
/// that releases it between them. Writing this many small keys takes a fraction of a
/// millisecond (a few in a debug build).
pub const LARGE_SLOT_KEYS: usize = 1024;

/// About how long one step holds the lock, for a writer that releases it between steps: the
/// piece of a large slot a step writes ends then. [`STEP_BYTES`] bounds a step too, but
/// moving keys back (hashing and inserting each) costs more than writing them.
pub const STEP_TIME: Duration = Duration::from_millis(2);

/// How many keys are written between two looks at the clock.
const KEYS_PER_CLOCK_READ: usize = 64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A snapshot in progress, held by the keyspace.
pub struct Capture {
    id: u64,
    encoder: RdbEncoder,
    /// One bit per slot: already captured (written, or being written from its frozen part).
    captured: Box<[u64]>,
    /// Where the walk resumes.
    next: usize,
    /// The keyspace as it was, if it was flushed or replaced while the snapshot ran.
    detached: Option<Box<[SlotTable]>>,
    /// Live slots whose frozen part this snapshot is writing, one bit per slot, and in order.
    writing: Box<[u64]>,
    writing_order: Vec<u16>,
    /// Entries this snapshot has yet to write and no longer shares with the keyspace: frozen
    /// parts of slots that were dropped, large slots of a detached keyspace.
    owned: Vec<SlotTable>,
}

fn bit(bits: &[u64], slot: usize) -> bool {
    bits[slot / 64] & (1 << (slot % 64)) != 0
}

fn set_bit(bits: &mut [u64], slot: usize, on: bool) {
    if on {
        bits[slot / 64] |= 1 << (slot % 64);
    } else {
        bits[slot / 64] &= !(1 << (slot % 64));
    }
}

fn write_entry(encoder: &mut RdbEncoder, e: &Entry) {
    match &e.value {
        Value::Str(s) => encoder.string_entry(e.key(), e.expire_at(), s.as_bytes()),
        other => encoder.entry(e.key(), e.expire_at(), &other.to_rdb()),
    }
}

/// Whether writing `table` at once would hold the lock too long. The size of a value is
/// a rough measure of what writing it costs: bytes for a string, elements for a collection.
fn is_large(table: &SlotTable) -> bool {
    if table.len() > LARGE_SLOT_KEYS {
        return true;
    }
    let size: usize = table
        .entries()
        .map(|e| {
            e.key().len()
                + match &e.value {
                    Value::Str(s) => s.as_bytes().len(),
                    Value::Hash(h) => h.len() * 16,
                    Value::List(l) => l.len() * 16,
                    Value::Set(x) => x.len() * 16,
                    Value::ZSet(z) => z.len() * 16,
                }
        })
        .sum();
    size > STEP_BYTES
}

impl Capture {
    pub fn new(aux: &Aux<'_>) -> Box<Capture> {
        let bits = || vec![0u64; SLOT_COUNT / 64].into_boxed_slice();
        Box::new(Capture {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            encoder: RdbEncoder::new(aux),
            captured: bits(),
            next: 0,
            detached: None,
            writing: bits(),
            writing_order: Vec::new(),
            owned: Vec::new(),
        })
    }

    /// Tells this snapshot from any other begun in the same process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn begin(&mut self, keys: u64, volatile: u64) {
        self.encoder.resize_db(keys, volatile);
    }

    /// Whether this snapshot is writing `slot` from its frozen part: what remains there is
    /// the snapshot's to write.
    pub(crate) fn is_writing(&self, slot: u16) -> bool {
        bit(&self.writing, slot as usize)
    }

    /// Writes one entry, as it was when the snapshot began.
    pub(crate) fn write(&mut self, e: &Entry) {
        write_entry(&mut self.encoder, e);
    }

    /// Captures `slot` now unless it already is: it is about to change.
    pub(crate) fn before_change(
        &mut self,
        slot: u16,
        live: &mut SlotTable,
        hasher: &impl BuildHasher,
    ) {
        self.capture(slot as usize, live, hasher, true);
    }

    /// Writes `slot`, or, if it is large and `piecewise`, sets it aside to write a piece per
    /// step; unless it is captured already.
    fn capture(
        &mut self,
        slot: usize,
        live: &mut SlotTable,
        hasher: &impl BuildHasher,
        piecewise: bool,
    ) {
        if bit(&self.captured, slot) {
            return;
        }
        set_bit(&mut self.captured, slot, true);
        let table = match self.detached.as_mut() {
            // An old table is the snapshot's alone: a large one is simply taken.
            Some(old) if piecewise && is_large(&old[slot]) => {
                self.owned.push(std::mem::take(&mut old[slot]));
                return;
            }
            Some(old) => &old[slot],
            None if piecewise && is_large(live) => {
                live.freeze(hasher);
                set_bit(&mut self.writing, slot, true);
                self.writing_order.push(slot as u16);
                return;
            }
            None => live,
        };
        for e in table.entries() {
            write_entry(&mut self.encoder, e);
        }
    }

    /// The keyspace is dropping `slot`: what it held aside for this snapshot is the
    /// snapshot's own from now on.
    pub(crate) fn adopt(&mut self, slot: u16, frozen: SlotTable) {
        set_bit(&mut self.writing, slot as usize, false);
        self.writing_order.retain(|&s| s != slot);
        self.owned.push(frozen);
    }

    /// The keyspace is being emptied or replaced: keep the old tables for the slots not
    /// written yet, and what was set aside. If that already happened once, the first old
    /// keyspace is the right one (and nothing of the second was set aside: from the first
    /// on, slots are captured from it).
    pub(crate) fn detach(&mut self, mut old: Box<[SlotTable]>) {
        if self.detached.is_some() {
            crate::db::drop_in_background(old);
            return;
        }
        for slot in std::mem::take(&mut self.writing_order) {
            set_bit(&mut self.writing, slot as usize, false);
            if let Some(frozen) = old[slot as usize].take_frozen() {
                self.owned.push(frozen);
            }
        }
        self.detached = Some(old);
    }

    /// Writes on until about `budget` bytes are ready; true once everything is written.
    /// `piecewise`: the caller releases the lock between steps, so large slots are set aside
    /// and written a piece per step, and a step also ends after about [`STEP_TIME`].
    pub(crate) fn step(
        &mut self,
        live: &mut [SlotTable],
        hasher: &impl BuildHasher,
        budget: usize,
        piecewise: bool,
    ) -> bool {
        let started = Instant::now();
        let in_time = || !piecewise || started.elapsed() < STEP_TIME;
        let mut keys = 0usize;
        // At least one piece per step, whatever the clock says: the snapshot always advances.
        loop {
            let enc = &mut self.encoder;
            let mut write = |e: &Entry| {
                write_entry(enc, e);
                keys += 1;
                enc.pending() < budget && (!keys.is_multiple_of(KEYS_PER_CLOCK_READ) || in_time())
            };
            if let Some(table) = self.owned.last_mut() {
                if table.drain_while(&mut write) {
                    self.owned.pop();
                }
            } else if let Some(&slot) = self.writing_order.last() {
                if live[slot as usize].thaw_while(hasher, &mut write) {
                    self.writing_order.pop();
                    set_bit(&mut self.writing, slot as usize, false);
                }
            } else if self.next < SLOT_COUNT {
                let slot = self.next;
                self.next += 1;
                self.capture(slot, &mut live[slot], hasher, piecewise);
            } else {
                break;
            }
            // Empty slots cost next to nothing: the clock is asked only once keys were written
            // (else an empty keyspace would take several steps in a debug build).
            if self.encoder.pending() >= budget || (keys > 0 && !in_time()) {
                break;
            }
        }
        self.next >= SLOT_COUNT && self.writing_order.is_empty() && self.owned.is_empty()
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

fn abandoned() -> std::io::Error {
    std::io::Error::other("snapshot abandoned")
}

/// Writes out the snapshot the keyspace is running, piece by piece, handing each piece to
/// `emit` with the lock released. If `emit` fails, the snapshot is abandoned; if someone
/// else abandons it, this fails.
pub async fn drive<F, Fut>(server: &Server, mut emit: F) -> std::io::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    let id = server.lock_db().snapshot_id().ok_or_else(abandoned)?;
    let started = Instant::now();
    let (mut steps, mut longest) = (0u64, Duration::ZERO);
    loop {
        let step = {
            let mut db = server.lock_db();
            let held = Instant::now();
            let step = db.snapshot_step_of(id, STEP_BYTES);
            longest = longest.max(held.elapsed());
            step
        };
        steps += 1;
        let Some((chunk, done)) = step else {
            return Err(abandoned());
        };
        if let Err(e) = emit(chunk).await {
            let mut db = server.lock_db();
            if db.snapshot_id() == Some(id) {
                db.abort_snapshot();
            }
            return Err(e);
        }
        if done {
            info!(
                ms = started.elapsed().as_millis() as u64,
                steps,
                longest_step_us = longest.as_micros() as u64,
                "snapshot written"
            );
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::db::Db;
    use crate::rdb::file::read_rdb;
    use crate::rdb::RdbValue;
    use crate::value::{EncodingLimits, StrValue};
    use lagwise_shared::slot::slot;

    const NOW: u64 = 1_000;
    const LATER: u64 = 10_000_000_000_000;
    /// Small pieces, so that changes fall between many of them.
    const BUDGET: usize = 1024;
    /// Keys of the large slot.
    const LARGE: usize = LARGE_SLOT_KEYS * 3;

    type Model = BTreeMap<Vec<u8>, (RdbValue, Option<u64>)>;

    fn aux() -> Aux<'static> {
        Aux {
            redis_ver: "7.0.15",
            ctime_secs: 0,
            used_mem: 0,
            repl_stream_db: None,
            repl_id: None,
            repl_offset: None,
            aof_base: false,
        }
    }

    fn s(v: &[u8]) -> Value {
        Value::Str(StrValue::new(v))
    }

    fn big(i: usize) -> Vec<u8> {
        format!("{{big}}:{i}").into_bytes()
    }

    /// A keyspace with one large slot (`{big}`), keys spread over the others, some with an
    /// expiry, and a hash; and what a snapshot of it must hold.
    fn keyspace() -> (Db, Model) {
        let mut db = Db::new();
        let mut model = Model::new();
        let mut put = |db: &mut Db, key: Vec<u8>, value: Value, expire: u64| {
            model.insert(
                key.clone(),
                (value.to_rdb(), (expire != 0).then_some(expire)),
            );
            db.set(&key, value, expire, NOW);
        };
        for i in 0..LARGE {
            let value = format!("{i:0>120}").into_bytes();
            put(
                &mut db,
                big(i),
                s(&value),
                if i % 5 == 0 { LATER + i as u64 } else { 0 },
            );
        }
        for i in 0..2000 {
            let expire = if i % 7 == 0 { LATER } else { 0 };
            put(
                &mut db,
                format!("k{i}").into_bytes(),
                s(format!("value {i}").as_bytes()),
                expire,
            );
        }
        let hash = RdbValue::Hash(vec![
            (b"f".to_vec(), b"1".to_vec()),
            (b"g".to_vec(), b"2".to_vec()),
        ]);
        let hash = Value::from_rdb(hash, &EncodingLimits::default()).expect("a hash");
        put(&mut db, b"h".to_vec(), hash, 0);
        (db, model)
    }

    fn read(file: &[u8]) -> Model {
        let mut out = Model::new();
        read_rdb(file, |e| {
            let old = out.insert(e.key, (e.value, e.expire_at_ms));
            assert!(old.is_none(), "a key written twice");
            Ok(())
        })
        .expect("a valid RDB file");
        out
    }

    /// What `drive` does, without a server: steps, and calls `between` with the step number
    /// while "the lock is released".
    fn run(db: &mut Db, mut between: impl FnMut(&mut Db, usize)) -> Vec<u8> {
        let id = db.snapshot_id().expect("a snapshot runs");
        let mut file = Vec::new();
        let mut step = 0;
        loop {
            let (chunk, done) = db.snapshot_step_of(id, BUDGET).expect("still running");
            file.extend(chunk);
            if done {
                return file;
            }
            between(db, step);
            step += 1;
        }
    }

    /// Changes every kind of slot: the large one, small ones captured or not, new keys.
    fn churn(db: &mut Db, step: usize) {
        db.set(&big(step % LARGE), s(b"changed"), 0, NOW);
        db.remove(&big((step * 31 + 7) % LARGE), NOW);
        db.set_expire(&big((step * 17 + 3) % LARGE), LATER * 2, NOW);
        if let Some(e) = db.get_mut(&big((step * 11 + 2) % LARGE), NOW) {
            e.value = s(b"changed in place");
        }
        db.set(format!("{{big}}:new{step}").as_bytes(), s(b"new"), 0, NOW);
        db.set(
            format!("k{}", step % 2000).as_bytes(),
            s(b"changed"),
            0,
            NOW,
        );
        db.remove(format!("k{}", (step * 13 + 5) % 2000).as_bytes(), NOW);
        db.set_expire(
            format!("k{}", (step * 7 + 1) % 2000).as_bytes(),
            LATER * 2,
            NOW,
        );
        db.set(format!("new{step}").as_bytes(), s(b"new"), 0, NOW);
        if let Some(e) = db.get_mut(b"h", NOW) {
            e.value = s(b"no longer a hash");
        }
        // Time passes for the active cycle: keys with an expiry before LATER + 100 go.
        db.active_expire(LATER + 100, 200);
    }

    /// Every live key, value and expiry, through the keyspace's own reads.
    fn contents(db: &mut Db) -> Model {
        let keys = db.keys_matching(NOW, |_| true);
        let mut out = Model::new();
        for k in keys {
            let e = db.get(k.as_slice(), NOW).expect("a listed key exists");
            out.insert(k.as_slice().to_vec(), (e.value.to_rdb(), e.expire_at()));
        }
        out
    }

    #[test]
    fn a_snapshot_keeps_its_moment_while_everything_changes() {
        let (mut db, model) = keyspace();
        db.begin_snapshot(Capture::new(&aux()));
        let mut steps = 0;
        let file = run(&mut db, |db, step| {
            churn(db, step);
            steps += 1;
        });
        assert!(steps > 50, "{steps} steps: too few to interleave");
        assert_eq!(read(&file), model);
        assert!(!db.snapshot_running());
    }

    #[test]
    fn a_large_slot_about_to_change_is_set_aside_not_written() {
        let (mut db, model) = keyspace();
        db.begin_snapshot(Capture::new(&aux()));
        let id = db.snapshot_id().expect("running");
        db.set(&big(0), s(b"changed"), 0, NOW);
        let (header, done) = db.snapshot_step_of(id, 0).expect("running");
        assert!(!done);
        // The header, and none of the large slot: it waits to be written a piece at a time.
        assert!(header.len() < 200, "{} bytes", header.len());
        // Meanwhile the keyspace reads it whole: set-aside keys and changed ones alike.
        assert_eq!(db.keys_in_slot(slot(b"big")), LARGE);
        let mut now = model.clone();
        now.insert(big(0), (RdbValue::String(b"changed".to_vec()), None));
        assert_eq!(contents(&mut db), now);
        let (cursor, keys) = db.scan(slot(b"big") as u64, 1, NOW, |_| true);
        assert_eq!((cursor, keys.len()), (slot(b"big") as u64 + 1, LARGE));
        let mut file = header;
        file.extend(run(&mut db, churn));
        assert_eq!(read(&file), model);
    }

    #[test]
    fn a_flush_during_the_snapshot_leaves_it_whole() {
        for flush_at in [0, 2, 40] {
            let (mut db, model) = keyspace();
            db.begin_snapshot(Capture::new(&aux()));
            let file = run(&mut db, |db, step| {
                churn(db, step);
                if step == flush_at || step == flush_at + 30 {
                    db.clear();
                }
            });
            assert_eq!(read(&file), model, "flushed at step {flush_at}");
        }
    }

    #[test]
    fn a_slot_dropped_while_written_is_still_written() {
        let (mut db, model) = keyspace();
        db.begin_snapshot(Capture::new(&aux()));
        let file = run(&mut db, |db, step| {
            churn(db, step);
            if step == 3 {
                assert!(db.delete_slot(slot(b"big"), NOW) > LARGE / 2);
            }
        });
        assert_eq!(read(&file), model);
        // The keyspace kept only what was written to the slot after the drop.
        let in_slot = contents(&mut db)
            .keys()
            .filter(|k| k.starts_with(b"{big}"))
            .count();
        assert_eq!(db.keys_in_slot(slot(b"big")), in_slot);
        assert!(in_slot < LARGE / 2, "{in_slot}");
    }

    #[test]
    fn save_under_the_lock_writes_large_slots_at_once() {
        let (mut db, model) = keyspace();
        db.begin_snapshot(Capture::new(&aux()));
        let mut file = Vec::new();
        loop {
            let (chunk, done) = db.snapshot_step(BUDGET);
            file.extend(chunk);
            if done {
                break;
            }
        }
        assert_eq!(read(&file), model);
    }

    #[test]
    fn an_abandoned_snapshot_leaves_the_keyspace_whole() {
        let (mut db, _) = keyspace();
        db.begin_snapshot(Capture::new(&aux()));
        let first = db.snapshot_id().expect("running");
        db.set(&big(1), s(b"changed"), 0, NOW);
        for step in 0..5 {
            db.snapshot_step_of(first, BUDGET).expect("running");
            churn(&mut db, step);
        }
        db.abort_snapshot();
        assert!(db.snapshot_step_of(first, BUDGET).is_none());
        // The large slot is still partly set aside: every key reads and changes as usual.
        for step in 5..10 {
            churn(&mut db, step);
        }
        let model = contents(&mut db);
        assert_eq!(model.len(), db.len());
        // The next snapshot takes it all, as it now is.
        db.begin_snapshot(Capture::new(&aux()));
        assert_ne!(db.snapshot_id(), Some(first));
        let file = run(&mut db, churn);
        assert_eq!(read(&file), model);
    }

    #[test]
    fn keys_set_aside_by_an_abandoned_snapshot_still_expire() {
        let (mut db, _) = keyspace();
        db.begin_snapshot(Capture::new(&aux()));
        let id = db.snapshot_id().expect("running");
        db.set(&big(1), s(b"changed"), 0, NOW);
        db.snapshot_step_of(id, BUDGET).expect("running");
        db.abort_snapshot();
        let volatile = db.volatile_len();
        let mut removed = 0;
        for _ in 0..100 {
            removed += db.active_expire(LATER * 3, 100_000);
        }
        assert_eq!(removed, volatile);
        assert_eq!(db.volatile_len(), 0);
        assert_eq!(db.get(&big(5), LATER * 3).map(|e| e.key().to_vec()), None);
        assert!(db.get(&big(6), LATER * 3).is_some());
    }
}
