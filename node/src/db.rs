//! The keyspace: every key, its value and its expiry, partitioned by hash slot.
//!
//! Keys live in one small hash table per slot (16384 of them), in standalone mode as in
//! cluster mode. That gives cluster mode its per-slot counts and key listing for free, keeps
//! every table small (a resize never moves millions of entries at once), and lets SCAN walk
//! the keyspace slot by slot with a cursor that stays valid while keys come and go.
//!
//! An entry is one allocation: key, value and expiry together (64 bytes for small strings),
//! and the tables hold only pointers to entries.
//!
//! All access goes through `&mut Db` under the server's one lock, so writes have one total
//! order. Time is passed in (`now_ms`): one command sees one instant, and tests control it.

use std::collections::{HashMap, HashSet};

use hashbrown::HashTable;
use std::hash::BuildHasher;

use compact_bytes::CompactBytes;
use lagwise_shared::slot::{slot, SLOT_COUNT};

use crate::propagate::Propagation;
use crate::snapshot::Capture;
use crate::value::{EncodingLimits, Value};

/// What happens to a key whose expiry has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryMode {
    /// A primary: the key is removed (lazily or by the active cycle) and a DEL is staged.
    Delete,
    /// A replica serving its clients: the key is invisible but stays until the primary's DEL.
    Hide,
    /// A replica applying its primary's stream: the key is still there; the primary decides.
    Keep,
}

/// One key with its value. `expire_at` is a Unix time in milliseconds; 0 means none.
#[derive(Debug)]
pub struct Entry {
    key: CompactBytes,
    pub value: Value,
    expire_at: u64,
}

impl Entry {
    pub fn key(&self) -> &[u8] {
        self.key.as_slice()
    }

    pub fn expire_at(&self) -> Option<u64> {
        (self.expire_at != 0).then_some(self.expire_at)
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at != 0 && self.expire_at <= now_ms
    }
}

type Table = HashTable<Box<Entry>>;

#[derive(Default)]
pub struct SlotTable {
    entries: Table,
    /// Entries a running snapshot has yet to write, as they were when it began: set aside
    /// whole when it took up this (large) slot, and moved back to `entries` as it writes
    /// them a piece at a time, or one by one just before a change to one (see `snapshot`).
    /// They are keys of the slot like any other, for everything but changes. None for nearly
    /// every slot; a snapshot that was abandoned may leave one, which is then just the
    /// slot's other half.
    frozen: Option<Box<Table>>,
    /// How many of the slot's entries have an expiry: the active cycle skips slots with none.
    volatile: u32,
}

/// What the keyspace counts for INFO.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyspaceStats {
    pub expired_keys: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
}

pub struct Db {
    slots: Box<[SlotTable]>,
    hasher: hashbrown::DefaultHashBuilder,
    keys: usize,
    volatile: usize,
    /// Where the active expiry cycle resumes.
    expire_cursor: usize,
    /// Writes since the last save (INFO's rdb_changes_since_last_save, save points).
    pub dirty: u64,
    /// When collections leave their compact encodings (CONFIG SET keeps this current).
    pub limits: EncodingLimits,
    /// WATCHed keys and the clients watching them; a change to one marks its watchers dirty,
    /// and their EXEC then fails.
    watched: HashMap<Vec<u8>, Vec<u64>>,
    dirty_watchers: HashSet<u64>,
    /// Clients blocked on keys (BLPOP and friends).
    pub blocked: crate::blocking::Blocked,
    pub stats: KeyspaceStats,
    /// Changes staged for the replication stream.
    pub repl: Propagation,
    pub expiry: ExpiryMode,
    /// A snapshot being written: slots are captured before their first change.
    snapshot: Option<Box<Capture>>,
    /// In cluster mode, where each slot is served (commands' keys are checked against it).
    pub cluster: Option<Box<crate::cluster::routing::Routing>>,
}

impl Default for Db {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("keys", &self.keys).finish()
    }
}

/// Frees a large keyspace on another thread: dropping millions of entries takes long enough
/// to stall every client if done under the lock.
pub fn drop_in_background(slots: Box<[SlotTable]>) {
    if slots.iter().all(|t| t.len() == 0) {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("lagwise-free".into())
        .spawn(move || drop(slots));
}

impl SlotTable {
    /// Every entry of the slot.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .chain(self.frozen.iter().flat_map(|f| f.iter()))
            .map(|b| &**b)
    }

    pub fn len(&self) -> usize {
        self.entries.len() + self.frozen.as_ref().map_or(0, |f| f.len())
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        let found = self.entries.find(hash, |e| e.key() == key);
        let found = found.or_else(|| self.frozen.as_ref()?.find(hash, |e| e.key() == key));
        found.map(|b| &**b)
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Sets every entry aside for a snapshot to write a piece at a time. O(1), unless an
    /// abandoned snapshot left entries aside already.
    pub fn freeze(&mut self, hasher: &impl BuildHasher) {
        match self.frozen.as_mut() {
            Some(frozen) => {
                for e in self.entries.drain() {
                    frozen.insert_unique(hasher.hash_one(e.key()), e, |x| hasher.hash_one(x.key()));
                }
            }
            None => {
                let n = self.entries.len();
                self.frozen = Some(Box::new(std::mem::take(&mut self.entries)));
                // Room for every entry to come back without a resize: one resize of a large
                // table would hold the lock as long as writing the slot at once.
                self.entries.reserve(n, |x| hasher.hash_one(x.key()));
            }
        }
    }

    /// Moves entries back from the frozen part, passing each to `write` first, for as long
    /// as it returns true. True once none is left aside.
    pub fn thaw_while(
        &mut self,
        hasher: &impl BuildHasher,
        mut write: impl FnMut(&Entry) -> bool,
    ) -> bool {
        let Some(frozen) = self.frozen.as_mut() else {
            return true;
        };
        for e in frozen.extract_if(|_| true) {
            let more = write(&e);
            self.entries
                .insert_unique(hasher.hash_one(e.key()), e, |x| hasher.hash_one(x.key()));
            if !more {
                break;
            }
        }
        if frozen.is_empty() {
            self.frozen = None;
        }
        self.frozen.is_none()
    }

    /// Moves `key` back from the frozen part if it is there, passing it to `write` first.
    fn thaw_key(
        &mut self,
        hasher: &impl BuildHasher,
        hash: u64,
        key: &[u8],
        write: impl FnOnce(&Entry),
    ) {
        let Some(frozen) = self.frozen.as_mut() else {
            return;
        };
        let Ok(found) = frozen.find_entry(hash, |e| e.key() == key) else {
            return;
        };
        let (e, _) = found.remove();
        write(&e);
        self.entries
            .insert_unique(hash, e, |e| hasher.hash_one(e.key()));
        if frozen.is_empty() {
            self.frozen = None;
        }
    }

    /// The frozen part, given up (to the snapshot that has yet to write it).
    pub fn take_frozen(&mut self) -> Option<SlotTable> {
        let frozen = self.frozen.take()?;
        Some(SlotTable {
            entries: *frozen,
            frozen: None,
            volatile: 0,
        })
    }

    /// Removes entries, passing each to `write` before dropping it, for as long as it
    /// returns true. True once the table is empty.
    pub fn drain_while(&mut self, mut write: impl FnMut(&Entry) -> bool) -> bool {
        for part in std::iter::once(&mut self.entries).chain(self.frozen.as_deref_mut()) {
            for e in part.extract_if(|_| true) {
                if !write(&e) {
                    return false;
                }
            }
        }
        self.frozen = None;
        self.entries.is_empty()
    }
}

impl Db {
    pub fn with_limits(limits: EncodingLimits) -> Db {
        Db {
            limits,
            ..Db::new()
        }
    }

    pub fn new() -> Db {
        Db {
            slots: (0..SLOT_COUNT).map(|_| SlotTable::default()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            keys: 0,
            volatile: 0,
            expire_cursor: 0,
            dirty: 0,
            limits: EncodingLimits::default(),
            watched: HashMap::new(),
            dirty_watchers: HashSet::new(),
            blocked: Default::default(),
            stats: KeyspaceStats::default(),
            repl: Propagation::default(),
            expiry: ExpiryMode::Delete,
            snapshot: None,
            cluster: None,
        }
    }

    pub fn len(&self) -> usize {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Keys that have an expiry.
    pub fn volatile_len(&self) -> usize {
        self.volatile
    }

    pub fn keys_in_slot(&self, slot: u16) -> usize {
        self.slots[slot as usize].len()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Removes `key` if it has expired; true if it did. Every read and write path calls this
    /// first, so an expired key is never seen.
    fn expire_if_due(&mut self, key: &[u8], hash: u64, slot: u16, now_ms: u64) -> bool {
        if self.expiry != ExpiryMode::Delete {
            return false;
        }
        let table = &self.slots[slot as usize];
        match table.find(hash, key) {
            Some(e) if e.is_expired(now_ms) => {}
            _ => return false,
        }
        self.before_change_key(slot, hash, key);
        let table = &mut self.slots[slot as usize];
        let Ok(occupied) = table.entries.find_entry(hash, |e| e.key() == key) else {
            return false;
        };
        let (entry, _) = occupied.remove();
        self.repl.expired(entry.key());
        table.volatile -= 1;
        self.volatile -= 1;
        self.keys -= 1;
        self.stats.expired_keys += 1;
        self.touch(entry.key());
        true
    }

    /// Whether an entry is invisible although present (an expired key on a replica).
    fn hidden(&self, e: &Entry, now_ms: u64) -> bool {
        self.expiry == ExpiryMode::Hide && e.is_expired(now_ms)
    }

    /// Capture hook: a slot about to change is captured by a running snapshot first (written,
    /// or if large set aside to be written a piece at a time), so the snapshot keeps the
    /// moment it began.
    fn before_change(&mut self, slot: u16) {
        if let Some(capture) = self.snapshot.as_mut() {
            capture.before_change(slot, &mut self.slots[slot as usize], &self.hasher);
        }
    }

    /// `before_change` for a change to one key; the key, if set aside, is moved back first
    /// (and written, if the running snapshot has yet to write it), so that only keys in
    /// `entries` ever change.
    fn before_change_key(&mut self, slot: u16, hash: u64, key: &[u8]) {
        self.before_change(slot);
        let table = &mut self.slots[slot as usize];
        if !table.is_frozen() {
            return;
        }
        let capture = self.snapshot.as_deref_mut().filter(|c| c.is_writing(slot));
        table.thaw_key(&self.hasher, hash, key, |e| {
            if let Some(c) = capture {
                c.write(e);
            }
        });
    }

    /// The live entry for `key`, or None (expired keys are removed on the way).
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        let (hash, slot) = (self.hash(key), slot(key));
        self.expire_if_due(key, hash, slot, now_ms);
        let found = self.slots[slot as usize].find(hash, key);
        found.filter(|e| !self.hidden(e, now_ms))
    }

    /// Like `get`, counting a keyspace hit or miss (read commands use this).
    pub fn lookup_read(&mut self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        let (hash, slot) = (self.hash(key), slot(key));
        self.expire_if_due(key, hash, slot, now_ms);
        let found = self.slots[slot as usize]
            .find(hash, key)
            .filter(|e| !self.hidden(e, now_ms));
        match found {
            Some(_) => self.stats.keyspace_hits += 1,
            None => self.stats.keyspace_misses += 1,
        }
        found
    }

    /// The live entry for `key`, to change it: counts as a modification for WATCH.
    pub fn get_mut(&mut self, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        let (hash, slot) = (self.hash(key), slot(key));
        self.expire_if_due(key, hash, slot, now_ms);
        // Only a key that exists can change; the extra probe happens only while someone
        // watches or waits on keys.
        let observed = !(self.watched.is_empty() && self.blocked.is_empty());
        if observed && self.slots[slot as usize].find(hash, key).is_some() {
            self.touch(key);
        }
        self.before_change_key(slot, hash, key);
        let hide = self.expiry == ExpiryMode::Hide;
        self.slots[slot as usize]
            .entries
            .find_mut(hash, |e| e.key() == key)
            .filter(|e| !(hide && e.is_expired(now_ms)))
            .map(|b| &mut **b)
    }

    pub fn contains(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.get(key, now_ms).is_some()
    }

    /// Stores `value` under `key`, replacing any value and its expiry with `expire_at`
    /// (0 = none). Returns the previous live value. One probe of the table.
    pub fn set(&mut self, key: &[u8], value: Value, expire_at: u64, now_ms: u64) -> Option<Value> {
        let (hash, slot) = (self.hash(key), slot(key));
        self.touch(key);
        self.before_change_key(slot, hash, key);
        let hasher = &self.hasher;
        let table = &mut self.slots[slot as usize];
        match table
            .entries
            .entry(hash, |e| e.key() == key, |e| hasher.hash_one(e.key()))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                let e = o.get_mut();
                let expired = e.is_expired(now_ms);
                if expired {
                    self.stats.expired_keys += 1;
                }
                let delta = (expire_at != 0) as isize - (e.expire_at != 0) as isize;
                e.expire_at = expire_at;
                let old = std::mem::replace(&mut e.value, value);
                table.volatile = (table.volatile as isize + delta) as u32;
                self.volatile = (self.volatile as isize + delta) as usize;
                (!expired).then_some(old)
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Box::new(Entry {
                    key: CompactBytes::new(key),
                    value,
                    expire_at,
                }));
                if expire_at != 0 {
                    table.volatile += 1;
                    self.volatile += 1;
                }
                self.keys += 1;
                None
            }
        }
    }

    /// Stores `value`, keeping the key's current expiry if it exists.
    pub fn set_keep_ttl(&mut self, key: &[u8], value: Value, now_ms: u64) -> Option<Value> {
        let ttl = self.get(key, now_ms).map(|e| e.expire_at).unwrap_or(0);
        self.set(key, value, ttl, now_ms)
    }

    /// Removes `key`; returns its live value.
    pub fn remove(&mut self, key: &[u8], now_ms: u64) -> Option<Box<Entry>> {
        let (hash, slot) = (self.hash(key), slot(key));
        if self.expire_if_due(key, hash, slot, now_ms) {
            return None;
        }
        if self.expiry == ExpiryMode::Hide && self.get(key, now_ms).is_none() {
            return None;
        }
        self.before_change_key(slot, hash, key);
        let table = &mut self.slots[slot as usize];
        let occupied = table.entries.find_entry(hash, |e| e.key() == key).ok()?;
        if !self.watched.is_empty() {
            self.dirty_watchers
                .extend(self.watched.get(key).into_iter().flatten());
        }
        let (entry, _) = occupied.remove();
        if entry.expire_at != 0 {
            table.volatile -= 1;
            self.volatile -= 1;
        }
        self.keys -= 1;
        Some(entry)
    }

    /// Sets or clears (`0`) the expiry of a live key. False if the key does not exist.
    pub fn set_expire(&mut self, key: &[u8], expire_at: u64, now_ms: u64) -> bool {
        let (hash, slot) = (self.hash(key), slot(key));
        self.expire_if_due(key, hash, slot, now_ms);
        if self.expiry == ExpiryMode::Hide && self.get(key, now_ms).is_none() {
            return false;
        }
        self.touch(key);
        self.before_change_key(slot, hash, key);
        let table = &mut self.slots[slot as usize];
        let Some(e) = table.entries.find_mut(hash, |e| e.key() == key) else {
            return false;
        };
        let delta = (expire_at != 0) as isize - (e.expire_at != 0) as isize;
        e.expire_at = expire_at;
        table.volatile = (table.volatile as isize + delta) as u32;
        self.volatile = (self.volatile as isize + delta) as usize;
        true
    }

    /// Marks the watchers of `key` dirty. One emptiness check when nothing is watched.
    fn touch(&mut self, key: &[u8]) {
        if !self.watched.is_empty() {
            if let Some(ids) = self.watched.get(key) {
                self.dirty_watchers.extend(ids.iter().copied());
            }
        }
        if !self.blocked.is_empty() {
            self.blocked.signal(key);
        }
    }

    /// WATCH: `client` is told (by `watch_failed`) if `key` changes from now on.
    pub fn watch(&mut self, client: u64, key: &[u8]) {
        let ids = self.watched.entry(key.to_vec()).or_default();
        if !ids.contains(&client) {
            ids.push(client);
        }
    }

    /// Forgets `client`'s watches on `keys` and its dirty mark.
    pub fn unwatch(&mut self, client: u64, keys: &[Vec<u8>]) {
        for key in keys {
            if let Some(ids) = self.watched.get_mut(key.as_slice()) {
                ids.retain(|&id| id != client);
                if ids.is_empty() {
                    self.watched.remove(key.as_slice());
                }
            }
        }
        self.dirty_watchers.remove(&client);
    }

    /// Whether a key `client` watches has changed since it was watched.
    pub fn watch_failed(&self, client: u64) -> bool {
        self.dirty_watchers.contains(&client)
    }

    /// Drops every key.
    pub fn clear(&mut self) {
        // Valkey marks the watchers of keys that existed.
        let existing: Vec<u64> = self
            .watched
            .iter()
            .filter(|(k, _)| {
                let k = k.as_slice();
                self.slots[slot(k) as usize]
                    .find(self.hasher.hash_one(k), k)
                    .is_some()
            })
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        self.dirty_watchers.extend(existing);
        let fresh: Box<[SlotTable]> = (0..SLOT_COUNT).map(|_| SlotTable::default()).collect();
        let old = std::mem::replace(&mut self.slots, fresh);
        self.keys = 0;
        self.volatile = 0;
        // A running snapshot still needs the slots it has not written: it takes them over.
        if let Some(capture) = self.snapshot.as_mut() {
            capture.detach(old);
        } else {
            drop_in_background(old);
        }
    }

    /// Replaces every key with those of `other` (a replica's freshly loaded snapshot), as
    /// one change: watchers of existing keys are marked, a running snapshot keeps the old.
    pub fn replace_keyspace(&mut self, other: Db) {
        self.clear();
        self.slots = other.slots;
        self.hasher = other.hasher;
        self.keys = other.keys;
        self.volatile = other.volatile;
        self.expire_cursor = 0;
    }

    /// Starts a snapshot of this moment; `snapshot_step` writes it out a piece at a time.
    pub fn begin_snapshot(&mut self, mut capture: Box<Capture>) {
        capture.begin(self.keys as u64, self.volatile as u64);
        self.snapshot = Some(capture);
    }

    pub fn snapshot_running(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Writes more of the running snapshot: the next not yet captured slots, until about
    /// `budget` bytes are ready. Returns the bytes and whether the snapshot is complete. For
    /// a caller that holds the lock throughout (SAVE): large slots are written at once.
    pub fn snapshot_step(&mut self, budget: usize) -> (Vec<u8>, bool) {
        let Some(capture) = self.snapshot.as_mut() else {
            return (Vec::new(), true);
        };
        if capture.step(&mut self.slots, &self.hasher, budget, false) {
            let last = self.snapshot.take().map(|c| c.finish()).unwrap_or_default();
            (last, true)
        } else {
            (capture.take(), false)
        }
    }

    /// The running snapshot's [id](Capture::id).
    pub fn snapshot_id(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|c| c.id())
    }

    /// `snapshot_step` for a caller that releases the lock between steps (`snapshot::drive`):
    /// a large slot is set aside and written over several steps. None if snapshot `id` is
    /// not the one running (it was abandoned).
    pub fn snapshot_step_of(&mut self, id: u64, budget: usize) -> Option<(Vec<u8>, bool)> {
        let capture = self.snapshot.as_mut().filter(|c| c.id() == id)?;
        if capture.step(&mut self.slots, &self.hasher, budget, true) {
            let last = self.snapshot.take().map(|c| c.finish()).unwrap_or_default();
            Some((last, true))
        } else {
            Some((capture.take(), false))
        }
    }

    /// Stops a running snapshot (its reader went away).
    pub fn abort_snapshot(&mut self) {
        self.snapshot = None;
    }

    /// Removes expired keys without waiting for reads: examines up to `budget` entries in
    /// slots that have expiring keys, resuming where the last cycle stopped. Returns how many
    /// keys it removed. Bounded work per call, so the lock is never held for long.
    pub fn active_expire(&mut self, now_ms: u64, budget: usize) -> usize {
        if self.volatile == 0 || self.expiry != ExpiryMode::Delete {
            return 0;
        }
        let mut examined = 0;
        let mut removed = 0;
        let mut slots_visited = 0;
        while examined < budget && slots_visited < SLOT_COUNT {
            let idx = self.expire_cursor;
            self.expire_cursor = (self.expire_cursor + 1) % SLOT_COUNT;
            slots_visited += 1;
            if self.slots[idx].volatile == 0 {
                continue;
            }
            self.before_change(idx as u16);
            // Entries set aside for the running snapshot wait until it has written them;
            // those an abandoned one left aside expire like the others.
            let writing = self
                .snapshot
                .as_ref()
                .is_some_and(|c| c.is_writing(idx as u16));
            let table = &mut self.slots[idx];
            examined += table.len();
            let before = table.len();
            let (watched, dirty) = (&self.watched, &mut self.dirty_watchers);
            let repl = &mut self.repl;
            let mut keep = |e: &mut Box<Entry>| {
                if e.is_expired(now_ms) {
                    if let Some(ids) = watched.get(e.key()) {
                        dirty.extend(ids.iter().copied());
                    }
                    repl.expired(e.key());
                    false
                } else {
                    true
                }
            };
            table.entries.retain(&mut keep);
            if let Some(frozen) = table.frozen.as_mut().filter(|_| !writing) {
                frozen.retain(&mut keep);
            }
            let gone = before - table.len();
            table.volatile -= gone as u32;
            self.volatile -= gone;
            self.keys -= gone;
            removed += gone;
        }
        self.stats.expired_keys += removed as u64;
        removed
    }

    /// One step of SCAN: returns live keys of whole slots starting at slot `cursor`, at least
    /// `count` of them unless the keyspace ends first, and the next cursor (0 when done).
    /// A slot is returned whole, so a key that exists for the whole scan is always returned.
    pub fn scan(
        &mut self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> (u64, Vec<CompactBytes>) {
        let mut out = Vec::new();
        let mut slot_idx = cursor as usize;
        // Skipping an empty slot costs one comparison, so a sparse keyspace is still walked
        // in few calls.
        while slot_idx < SLOT_COUNT && out.len() < count {
            let table = &self.slots[slot_idx];
            for e in table.entries() {
                if !e.is_expired(now_ms) && keep(e) {
                    out.push(e.key.clone());
                }
            }
            slot_idx += 1;
        }
        let next = if slot_idx >= SLOT_COUNT {
            0
        } else {
            slot_idx as u64
        };
        (next, out)
    }

    /// Every live key (KEYS), filtered.
    pub fn keys_matching(
        &self,
        now_ms: u64,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Vec<CompactBytes> {
        let mut out = Vec::new();
        for t in self.slots.iter() {
            for e in t.entries() {
                if !e.is_expired(now_ms) && keep(e.key()) {
                    out.push(e.key.clone());
                }
            }
        }
        out
    }

    /// Drops every key of `slot` (a slot this node no longer owns). Replicas are told with
    /// a DEL per key, as Valkey does.
    pub fn delete_slot(&mut self, slot: u16, _now_ms: u64) -> usize {
        if self.slots[slot as usize].len() == 0 {
            return 0;
        }
        self.before_change(slot);
        let mut table = std::mem::take(&mut self.slots[slot as usize]);
        let n = table.len();
        for e in table.entries() {
            self.touch(e.key());
            self.repl.expired(e.key());
        }
        // What the running snapshot has yet to write of the slot is its own from now on.
        if let Some(capture) = self.snapshot.as_mut().filter(|c| c.is_writing(slot)) {
            if let Some(frozen) = table.take_frozen() {
                capture.adopt(slot, frozen);
            }
        }
        self.keys -= n;
        self.volatile -= table.volatile as usize;
        self.dirty += n as u64;
        n
    }

    /// Keys of one slot, at most `count` (CLUSTER GETKEYSINSLOT).
    pub fn keys_in_slot_list(&self, slot: u16, count: usize) -> Vec<CompactBytes> {
        self.slots[slot as usize]
            .entries()
            .take(count)
            .map(|e| e.key.clone())
            .collect()
    }

    /// A random live key, or None if there are none.
    pub fn random_key(&mut self, now_ms: u64) -> Option<CompactBytes> {
        use rand::Rng;
        let mut rng = rand::rng();
        // Retry a few times when the pick has expired, as Valkey does, removing it.
        for _ in 0..100 {
            if self.keys == 0 {
                return None;
            }
            let mut n = rng.random_range(0..self.keys);
            let mut pick = None;
            for t in self.slots.iter() {
                if n < t.len() {
                    pick = t
                        .entries()
                        .nth(n)
                        .map(|e| (e.key.clone(), e.is_expired(now_ms)));
                    break;
                }
                n -= t.len();
            }
            let (key, expired) = pick?;
            if !expired {
                return Some(key);
            }
            self.get(key.as_slice(), now_ms);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::StrValue;

    fn s(v: &str) -> Value {
        Value::Str(StrValue::new(v.as_bytes()))
    }

    #[test]
    fn entry_is_one_small_allocation() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    #[test]
    fn set_get_remove() {
        let mut db = Db::new();
        assert!(db.set(b"a", s("1"), 0, 0).is_none());
        assert!(db.set(b"a", s("2"), 0, 0).is_some());
        assert_eq!(db.len(), 1);
        assert!(
            matches!(&db.get(b"a", 0).expect("present").value, Value::Str(v) if v.as_bytes() == b"2")
        );
        assert!(db.remove(b"a", 0).is_some());
        assert!(db.is_empty());
    }

    #[test]
    fn expired_keys_vanish_lazily() {
        let mut db = Db::new();
        db.set(b"k", s("v"), 1000, 0);
        assert_eq!(db.volatile_len(), 1);
        assert!(db.get(b"k", 999).is_some());
        assert!(db.get(b"k", 1000).is_none());
        assert_eq!(db.len(), 0);
        assert_eq!(db.volatile_len(), 0);
        assert_eq!(db.stats.expired_keys, 1);
    }

    #[test]
    fn active_expiry_reclaims_without_reads() {
        let mut db = Db::new();
        for i in 0..1000 {
            db.set(format!("k{i}").as_bytes(), s("v"), 50, 0);
        }
        db.set(b"keep", s("v"), 0, 0);
        let mut removed = 0;
        for _ in 0..100 {
            removed += db.active_expire(100, 200);
        }
        assert_eq!(removed, 1000);
        assert_eq!(db.len(), 1);
        assert_eq!(db.stats.expired_keys, 1000);
    }

    #[test]
    fn scan_returns_every_key_once_the_cursor_returns_to_zero() {
        let mut db = Db::new();
        for i in 0..5000 {
            db.set(format!("key:{i}").as_bytes(), s("v"), 0, 0);
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, keys) = db.scan(cursor, 10, 0, |_| true);
            seen.extend(keys.into_iter().map(|k| k.as_slice().to_vec()));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), 5000);
    }

    #[test]
    fn per_slot_counts() {
        let mut db = Db::new();
        db.set(b"{user}:a", s("1"), 0, 0);
        db.set(b"{user}:b", s("1"), 0, 0);
        assert_eq!(db.keys_in_slot(slot(b"user")), 2);
        assert_eq!(db.keys_in_slot_list(slot(b"user"), 10).len(), 2);
    }
}
