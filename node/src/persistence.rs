//! RDB persistence: SAVE, BGSAVE, save points, and loading at start.
//!
//! A file is written to a temporary name in `dir`, fsynced, and renamed over `dbfilename`,
//! so a crash mid-write leaves the previous file intact. At start the file is loaded before
//! any client is served; a file that cannot be read stops the start, because replacing a
//! dataset with an empty one is the one thing persistence must never do.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tracing::{info, warn};

use crate::cmd::CmdError;
use crate::config::Config;
use crate::db::Db;
use crate::rdb::file::{read_rdb, RdbInfo};
use crate::server::{now_ms, Server};
use crate::snapshot::{self, Capture};
use crate::value::Value;

#[derive(Debug)]
pub struct PersistState {
    pub last_save_unix: u64,
    pub bgsave_in_progress: bool,
    pub bgsave_started: Option<Instant>,
    pub last_bgsave_ok: bool,
    pub last_bgsave_secs: i64,
    pub saves: u64,
    /// Set by SHUTDOWN/BGSAVE SCHEDULE while another snapshot runs.
    pub bgsave_scheduled: bool,
}

#[derive(Debug)]
pub struct Persistence {
    pub state: Mutex<PersistState>,
}

impl Persistence {
    pub fn new(started_unix: u64) -> Persistence {
        Persistence {
            state: Mutex::new(PersistState {
                last_save_unix: started_unix,
                bgsave_in_progress: false,
                bgsave_started: None,
                last_bgsave_ok: true,
                last_bgsave_secs: -1,
                saves: 0,
                bgsave_scheduled: false,
            }),
        }
    }
}

/// `dbfilename`: the process works in `dir` (it changes there at start, as Valkey does).
pub fn rdb_path(config: &Config) -> PathBuf {
    PathBuf::from(config.get("dbfilename"))
}

/// A temporary name beside `target`, as Valkey names its own.
fn temp_name(target: &Path) -> PathBuf {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.join(format!(
        "temp-{}-{}.rdb",
        std::process::id(),
        now_ms() % 1_000_000
    ))
}

/// Writes a file in pieces to a temporary name and, on `commit`, makes it durable and gives
/// it its real name.
struct AtomicFile {
    tmp: PathBuf,
    target: PathBuf,
    file: File,
}

impl AtomicFile {
    fn create(target: PathBuf) -> std::io::Result<AtomicFile> {
        let tmp = temp_name(&target);
        let file = File::create(&tmp)?;
        Ok(AtomicFile { tmp, target, file })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }

    fn commit(self) -> std::io::Result<()> {
        self.file.sync_all()?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.target)?;
        // The rename itself must survive a crash too.
        let dir = match self.target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn abandon(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// SAVE: writes the snapshot now, holding the lock throughout, as Valkey's SAVE blocks.
pub fn save_locked(server: &Server, db: &mut Db) -> Result<(), CmdError> {
    if db.snapshot_running() || server.persistence.state.lock().bgsave_in_progress {
        return Err("ERR Background save already in progress".into());
    }
    let target = rdb_path(&server.config.read());
    let offset = server.stream_position(db);
    let replid = server.repl.state.lock().replid.clone();
    let started = Instant::now();
    let result = (|| -> std::io::Result<()> {
        let mut file = AtomicFile::create(target.clone())?;
        db.begin_snapshot(Capture::new(&snapshot::aux(&replid, offset, false)));
        loop {
            let (chunk, done) = db.snapshot_step(snapshot::STEP_BYTES);
            if let Err(e) = file.write(&chunk) {
                db.abort_snapshot();
                file.abandon();
                return Err(e);
            }
            if done {
                break;
            }
        }
        file.commit()
    })();
    match result {
        Ok(()) => {
            db.dirty = 0;
            let mut s = server.persistence.state.lock();
            s.last_save_unix = now_ms() / 1000;
            s.saves += 1;
            info!(path = %target.display(), ms = started.elapsed().as_millis() as u64, "DB saved on disk");
            Ok(())
        }
        Err(e) => {
            warn!(path = %target.display(), error = %e, "SAVE failed");
            Err(format!("ERR {e}").into())
        }
    }
}

/// What BGSAVE did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bgsave {
    Started,
    /// A full sync is writing its snapshot; this one follows it.
    Scheduled,
}

/// BGSAVE: begins a snapshot now and writes it out while clients are served. `schedule`: if
/// another snapshot is running, run after it rather than fail.
pub fn start_bgsave(server: &Arc<Server>, db: &mut Db, schedule: bool) -> Result<Bgsave, CmdError> {
    {
        let mut s = server.persistence.state.lock();
        if s.bgsave_in_progress {
            return Err("ERR Background save already in progress".into());
        }
        if db.snapshot_running() {
            if !schedule {
                return Err("ERR Another child process is active (AOF?): can't BGSAVE right now. Use BGSAVE SCHEDULE in order to schedule a BGSAVE whenever possible.".into());
            }
            s.bgsave_scheduled = true;
            return Ok(Bgsave::Scheduled);
        }
        s.bgsave_scheduled = false;
        s.bgsave_in_progress = true;
        s.bgsave_started = Some(Instant::now());
    }
    let target = rdb_path(&server.config.read());
    let offset = server.stream_position(db);
    let replid = server.repl.state.lock().replid.clone();
    let dirty_at_start = db.dirty;
    db.begin_snapshot(Capture::new(&snapshot::aux(&replid, offset, false)));
    let server = server.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = write_background(&server, target.clone()).await;
        let ok = result.is_ok();
        match &result {
            Ok(()) => {
                info!(path = %target.display(), ms = started.elapsed().as_millis() as u64, "background saving terminated with success")
            }
            Err(e) => warn!(path = %target.display(), error = %e, "background saving failed"),
        }
        if ok {
            let mut db = server.lock_db();
            db.dirty = db.dirty.saturating_sub(dirty_at_start);
        }
        let mut s = server.persistence.state.lock();
        s.bgsave_in_progress = false;
        s.bgsave_started = None;
        s.last_bgsave_ok = ok;
        s.last_bgsave_secs = started.elapsed().as_secs() as i64;
        if ok {
            s.last_save_unix = now_ms() / 1000;
            s.saves += 1;
        }
    });
    Ok(Bgsave::Started)
}

/// The background cycle's part: a scheduled BGSAVE, or a `save <seconds> <changes>` point
/// that has been reached.
pub fn cron(server: &Arc<Server>) {
    let points = server.config.read().get("save").to_string();
    let (scheduled, last_save, last_ok, in_progress) = {
        let s = server.persistence.state.lock();
        (
            s.bgsave_scheduled,
            s.last_save_unix,
            s.last_bgsave_ok,
            s.bgsave_in_progress,
        )
    };
    if in_progress {
        return;
    }
    let mut db = server.lock_db();
    if db.snapshot_running() {
        return;
    }
    let now = now_ms() / 1000;
    let elapsed = now.saturating_sub(last_save);
    let words: Vec<u64> = points
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let due = words.chunks(2).any(|p| {
        // After a failed save, Valkey waits 5 s before trying again.
        p.len() == 2 && db.dirty >= p[1] && elapsed >= p[0] && (last_ok || elapsed > 5)
    });
    if scheduled || due {
        if due {
            info!(
                changes = db.dirty,
                seconds = elapsed,
                "save point reached, saving"
            );
        }
        let _ = start_bgsave(server, &mut db, false);
    }
}

/// Writes the running snapshot to a temporary file, then makes it durable under its name.
async fn write_background(server: &Server, target: PathBuf) -> std::io::Result<()> {
    let tmp = temp_name(&target);
    match snapshot::to_file(server, tmp.clone()).await {
        Ok((file, _)) => {
            tokio::task::spawn_blocking(move || AtomicFile { tmp, target, file }.commit())
                .await
                .map_err(std::io::Error::other)?
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// What a loaded file says about replication: where the dataset stands in its history.
#[derive(Debug, Clone)]
pub struct LoadedHistory {
    pub replid: String,
    pub offset: u64,
}

/// On SIGTERM, Valkey saves first if save points are configured.
pub fn save_before_exit(server: &Server) {
    if server.config.read().get("save").is_empty() {
        return;
    }
    let mut db = server.lock_db();
    if db.snapshot_running() {
        db.abort_snapshot();
        server.persistence.state.lock().bgsave_in_progress = false;
    }
    if let Err(e) = save_locked(server, &mut db) {
        warn!(error = %String::from_utf8_lossy(&e.0), "error trying to save the DB before exiting");
    }
}

/// Loads `dir/dbfilename` if it exists. `keep_expired`: a replica keeps keys that expired
/// (its primary will delete them); a primary drops them.
pub fn load_at_start(
    config: &Config,
    db: &mut Db,
    keep_expired: bool,
) -> Result<Option<LoadedHistory>, String> {
    let path = rdb_path(config);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let started = Instant::now();
    let info = load_into(&bytes, db, keep_expired)
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    info!(
        path = %path.display(),
        keys = db.len(),
        ms = started.elapsed().as_millis() as u64,
        "DB loaded from disk"
    );
    Ok(history(&info))
}

/// The replication history a file records, if it records a valid one.
pub fn history(info: &RdbInfo) -> Option<LoadedHistory> {
    let id = info.repl_id.as_ref()?;
    let offset = info.repl_offset?;
    (id.len() == 40 && offset >= 0).then(|| LoadedHistory {
        replid: id.clone(),
        offset: offset as u64,
    })
}

/// Reads a whole RDB into `db` (which should be empty).
pub fn load_into(bytes: &[u8], db: &mut Db, keep_expired: bool) -> Result<RdbInfo, String> {
    read_rdb(bytes, |entry| load_entry(db, entry, keep_expired)).map_err(|e| e.to_string())
}

/// Puts one key read from an RDB into `db`.
pub fn load_entry(
    db: &mut Db,
    entry: crate::rdb::file::RdbEntry,
    keep_expired: bool,
) -> Result<(), crate::rdb::file::RdbLoadError> {
    let now = now_ms();
    let limits = db.limits;
    {
        if entry.db != 0 {
            return Err(crate::rdb::file::RdbLoadError::Rejected(format!(
                "key '{}' is in database {}; this node serves database 0 only",
                String::from_utf8_lossy(&entry.key),
                entry.db
            )));
        }
        // 0 means "no expiry" in the keyspace; a file's expiry at 0 ms is long past.
        let expire = entry.expire_at_ms.map_or(0, |t| t.max(1));
        if !keep_expired && expire != 0 && expire <= now {
            return Ok(());
        }
        if entry.value.is_empty_collection() {
            return Ok(());
        }
        let key = entry.key;
        let value = Value::from_rdb(entry.value, &limits).ok_or_else(|| {
            crate::rdb::file::RdbLoadError::Rejected(format!(
                "invalid value for key '{}'",
                String::from_utf8_lossy(&key)
            ))
        })?;
        db.set(&key, value, expire, 0);
        Ok(())
    }
}
