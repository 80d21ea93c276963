//! The registry of connected clients, for CLIENT LIST / INFO / KILL and INFO clients.
//!
//! Each connection owns its `ClientState`; what other connections may look at or change
//! (name, last command, a kill request) sits in a shared `ClientHandle`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// What CLIENT LIST shows of a client and may change from elsewhere.
#[derive(Debug, Default, Clone)]
pub struct ClientInfo {
    pub name: String,
    pub lib_name: String,
    pub lib_ver: String,
    pub last_cmd: &'static str,
    pub resp: u8,
    pub no_evict: bool,
    pub qbuf: usize,
}

/// CLIENT LIST's `TYPE`: what the connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Normal,
    /// A replica of this node (after its PSYNC).
    Replica,
    /// This node's link to its own primary.
    Master,
}

#[derive(Debug)]
pub struct ClientHandle {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub created: Instant,
    /// Milliseconds since `created` of the last command, for `idle=`.
    last_active_ms: AtomicU64,
    killed: AtomicBool,
    kill_notify: Notify,
    kind: AtomicU8,
    pub info: Mutex<ClientInfo>,
}

impl ClientHandle {
    pub fn set_kind(&self, kind: ClientKind) {
        self.kind.store(kind as u8, Ordering::Relaxed);
    }

    pub fn kind(&self) -> ClientKind {
        match self.kind.load(Ordering::Relaxed) {
            1 => ClientKind::Replica,
            2 => ClientKind::Master,
            _ => ClientKind::Normal,
        }
    }

    /// Whether CLIENT LIST/KILL's `TYPE name` selects this client.
    pub fn is_type(&self, name: &[u8]) -> bool {
        let kind = self.kind();
        if name.eq_ignore_ascii_case(b"replica") || name.eq_ignore_ascii_case(b"slave") {
            kind == ClientKind::Replica
        } else if name.eq_ignore_ascii_case(b"master") {
            kind == ClientKind::Master
        } else if name.eq_ignore_ascii_case(b"normal") {
            kind == ClientKind::Normal
        } else {
            false
        }
    }

    pub fn touch(&self) {
        self.last_active_ms
            .store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_secs(&self) -> u64 {
        let now = self.created.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)) / 1000
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill_notify.notify_one();
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Resolves once the client has been killed.
    pub async fn killed(&self) {
        loop {
            let notified = self.kill_notify.notified();
            if self.is_killed() {
                return;
            }
            notified.await;
        }
    }

    /// One CLIENT LIST line (without the trailing newline), in Valkey's field order.
    pub fn describe(&self, current_cmd: Option<&str>) -> String {
        let info = self.info.lock();
        let cmd = current_cmd.unwrap_or(info.last_cmd);
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            info.name,
            self.created.elapsed().as_secs(),
            self.idle_secs(),
            match (self.kind(), info.no_evict) {
                (ClientKind::Replica, _) => "S",
                (ClientKind::Master, _) => "M",
                (_, true) => "e",
                _ => "N",
            },
            info.qbuf,
            if cmd.is_empty() { "NULL" } else { cmd },
            info.resp.max(2),
            info.lib_name,
            info.lib_ver,
        )
    }
}

#[derive(Debug, Default)]
pub struct Clients {
    next_id: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<ClientHandle>>>,
}

impl Clients {
    pub fn register(&self, addr: SocketAddr, laddr: SocketAddr) -> Arc<ClientHandle> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = Arc::new(ClientHandle {
            id,
            addr,
            laddr,
            created: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            kill_notify: Notify::new(),
            kind: AtomicU8::new(ClientKind::Normal as u8),
            info: Mutex::new(ClientInfo {
                resp: 2,
                ..ClientInfo::default()
            }),
        });
        self.all.lock().insert(id, handle.clone());
        handle
    }

    pub fn unregister(&self, id: u64) {
        self.all.lock().remove(&id);
    }

    pub fn count(&self) -> usize {
        self.all.lock().len()
    }

    /// A snapshot of the handles, so no lock is held while formatting or killing.
    pub fn snapshot(&self) -> Vec<Arc<ClientHandle>> {
        self.all.lock().values().cloned().collect()
    }
}
