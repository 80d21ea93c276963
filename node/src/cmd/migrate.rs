//! MIGRATE and RESTORE-ASKING: moving keys to another server, the way Redis 7.0 does it.
//!
//! MIGRATE runs under the keyspace lock and talks to the target synchronously, on a blocking
//! socket with the command's timeout, just as Redis blocks its event loop for it. The keys
//! cannot change while they are in flight, so when it returns each key exists on one side
//! (after an I/O error, possibly on both; never on neither).
//!
//! The target receives, in one write: `AUTH` when asked, `SELECT db` unless the connection is
//! known to be in that database already, then `RESTORE key ttl payload [REPLACE]` for each key
//! that exists (`RESTORE-ASKING` in cluster mode). Then one reply line per command is read.
//! Keys the target restored are deleted here (unless COPY) and reach replicas as one `DEL`.
//!
//! Connections are cached per `host:port` and closed after 10 s unused, like Redis's
//! `migrate_cached_sockets`. A cached connection the target has closed since is detected by
//! the failure it causes, and the batch is sent once more on a new one (see [`transfer`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lagwise_shared::resp::errors;
use parking_lot::Mutex;

use super::{is, parse_i64, CmdError, CmdResult, Ctx, Handler};
use crate::rdb;

/// A timeout argument of 0 or less means this (Redis: `if (timeout <= 0) timeout = 1000`).
const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Cached connections unused for longer than this are closed (MIGRATE_SOCKET_CACHE_TTL).
const LINK_IDLE: Duration = Duration::from_secs(10);
/// At most this many cached connections (MIGRATE_SOCKET_CACHE_ITEMS).
const MAX_LINKS: usize = 64;
/// The longest reply line accepted from a target. AUTH, SELECT and RESTORE answer with one
/// short line (Redis reads them into 1 KiB buffers); anything longer is not such a reply.
const MAX_REPLY_LINE: usize = 4096;

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("migrate", migrate);
    // RESTORE itself. The command table flags it ASKING: in cluster mode that lets it write
    // to a slot being imported without a preceding ASKING.
    m.insert("restore-asking", super::keys::restore);
}

/// `MIGRATE host port key|"" destination-db timeout [COPY] [REPLACE] [AUTH password]
/// [AUTH2 username password] [KEYS key [key ...]]`
fn migrate(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let req = Request::parse(args)?;
    let now = ctx.now_ms;
    let restore: &[u8] = if ctx.server.config.read().get_bool("cluster-enabled") {
        b"RESTORE-ASKING"
    } else {
        b"RESTORE"
    };

    // One RESTORE per key that exists. When none does, that is NOKEY rather than an error:
    // usually the key just expired.
    let mut keys: Vec<&Bytes> = Vec::with_capacity(req.keys.len());
    let mut batch = Vec::new();
    for key in req.keys {
        let Some(entry) = ctx.db.lookup_read(key, now) else {
            continue;
        };
        // The remaining time to live; 0 means none. A live key has at least 1 ms left.
        let ttl = entry
            .expire_at()
            .map_or(0, |at| at.saturating_sub(now).max(1));
        let payload = rdb::dump_payload(&entry.value.to_rdb());
        let mut ttl_text = itoa::Buffer::new();
        let command: [&[u8]; 5] = [
            restore,
            key,
            ttl_text.format(ttl).as_bytes(),
            &payload,
            b"REPLACE",
        ];
        put_command(&mut batch, &command[..if req.replace { 5 } else { 4 }]);
        keys.push(key);
    }
    if keys.is_empty() {
        ctx.out.simple("NOKEY");
        return Ok(());
    }

    let done = blocking(|| transfer(&req, &batch, keys.len()));

    // The keys the target acknowledged leave this node even when a later one failed, and
    // replicas see them leave as one DEL: Redis rewrites MIGRATE as `DEL key...` likewise.
    if !req.copy && !done.restored.is_empty() {
        for &i in &done.restored {
            ctx.db.remove(keys[i], now);
            ctx.db.dirty += 1;
        }
        ctx.db
            .repl
            .emit_with(&[b"DEL"], done.restored.iter().map(|&i| &keys[i][..]));
    }
    if let Some(error) = done.target_error {
        let mut msg = b"ERR Target instance replied with error: ".to_vec();
        msg.extend_from_slice(&error);
        return Err(msg.into());
    }
    if let Some(failure) = done.failure {
        return Err(failure.message().into());
    }
    ctx.out.ok();
    Ok(())
}

/// A parsed MIGRATE.
#[derive(Debug)]
struct Request<'a> {
    host: &'a [u8],
    port: &'a [u8],
    db: i64,
    /// The longest the target may keep us waiting at any one moment (connect, a write, a read).
    timeout: Duration,
    keys: &'a [Bytes],
    copy: bool,
    replace: bool,
    username: Option<&'a [u8]>,
    password: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// Reads the arguments in Redis's order: options first (a syntax error wins), then the
    /// timeout, then the database.
    fn parse(args: &'a [Bytes]) -> Result<Request<'a>, CmdError> {
        let mut req = Request {
            host: &args[1],
            port: &args[2],
            db: 0,
            timeout: Duration::ZERO,
            keys: &args[3..4],
            copy: false,
            replace: false,
            username: None,
            password: None,
        };
        let mut i = 6;
        while i < args.len() {
            let more = args.len() - 1 - i;
            let opt = &args[i];
            if is(opt, "COPY") {
                req.copy = true;
            } else if is(opt, "REPLACE") {
                req.replace = true;
            } else if is(opt, "AUTH") && more >= 1 {
                req.password = Some(&args[i + 1]);
                i += 1;
            } else if is(opt, "AUTH2") && more >= 2 {
                req.username = Some(&args[i + 1]);
                req.password = Some(&args[i + 2]);
                i += 2;
            } else if is(opt, "KEYS") {
                if !args[3].is_empty() {
                    return Err("ERR When using MIGRATE KEYS option, the key argument must be set to the empty string".into());
                }
                // Everything after KEYS is a key, option names included.
                req.keys = &args[i + 1..];
                break;
            } else {
                return Err(errors::SYNTAX.into());
            }
            i += 1;
        }
        let timeout = parse_i64(&args[5])?;
        req.db = parse_i64(&args[4])?;
        req.timeout = Duration::from_millis(if timeout <= 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            timeout as u64
        });
        Ok(req)
    }

    /// The connection cache's key: the arguments as given, not the resolved address.
    fn link_name(&self) -> Vec<u8> {
        [self.host, b":", self.port].concat()
    }
}

/// Runs blocking I/O from a command handler. On a multi-threaded runtime the worker thread is
/// handed over first, so the tasks queued on it move elsewhere (as DEBUG SLEEP does).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Why the exchange with the target stopped, for the IOERR reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connecting,
    Writing,
    Reading,
}

impl Failure {
    /// Redis's texts, word for word (the "to the client" of the first included).
    fn message(self) -> &'static str {
        match self {
            Failure::Connecting => "IOERR error or timeout connecting to the client",
            Failure::Writing => "IOERR error or timeout writing to target instance",
            Failure::Reading => "IOERR error or timeout reading to target instance",
        }
    }
}

/// How a connection failed. Only a timeout (or a reply that is not one) rules out the retry on
/// a fresh connection: Redis retries unless `errno == ETIMEDOUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkError {
    Timeout,
    /// Closed, reset, refused: what a cached connection the target dropped looks like.
    Broken,
    /// A reply line longer than [`MAX_REPLY_LINE`].
    Garbled,
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LinkError::Timeout,
            _ => LinkError::Broken,
        }
    }
}

/// What became of a batch.
#[derive(Debug, Default)]
struct Transferred {
    /// Indexes (into the batch) of the keys the target restored, in order.
    restored: Vec<usize>,
    /// The first error the target replied with, without its '-': AUTH's, else SELECT's, else
    /// the first RESTORE's. It is the reply, whatever else happened.
    target_error: Option<Vec<u8>>,
    /// The I/O failure that ended the exchange.
    failure: Option<Failure>,
}

/// Sends the batch of `count` RESTOREs and reads the replies, on a cached connection if there
/// is one.
///
/// Redis's retry rule: when the connection fails before the first RESTORE reply was read (on
/// the write, or reading the AUTH or SELECT reply, or the first RESTORE reply), and the
/// failure is not a timeout, the connection is dropped and the whole batch is sent once more
/// on a new one. That is the case of a cached connection the target closed meanwhile: the
/// write succeeds, the read finds the connection closed. Once a RESTORE reply was read,
/// there is no retry: the target has applied part of the batch. A connection refused counts
/// as a failed write (see [`Dial`]), so it too is tried twice.
fn transfer(req: &Request<'_>, batch: &[u8], count: usize) -> Transferred {
    let name = req.link_name();
    let mut may_retry = true;
    loop {
        let dialed = match checkout(&name) {
            Some(link) => Ok(link),
            None => Link::connect(req.host, req.port, req.timeout),
        };
        let (ex, link) = match dialed {
            Ok(mut link) => (exchange(&mut link, req, batch, count), Some(link)),
            Err(Dial::Unresolved(e)) => {
                tracing::debug!(target = %String::from_utf8_lossy(&name), error = %e, "MIGRATE cannot connect");
                return Transferred {
                    failure: Some(Failure::Connecting),
                    ..Transferred::default()
                };
            }
            Err(Dial::Failed(e)) => {
                let ex = Exchange {
                    broken: Some((Failure::Writing, e)),
                    ..Exchange::default()
                };
                (ex, None)
            }
        };
        let Some((failure, error)) = ex.broken else {
            if let Some(mut link) = link {
                // A target that replied with an error may not be in the database we think.
                link.db = ex.target_error.is_none().then_some(req.db);
                checkin(name, link);
            }
            return Transferred {
                restored: ex.restored,
                target_error: ex.target_error,
                failure: None,
            };
        };
        drop(link);
        tracing::debug!(target = %String::from_utf8_lossy(&name), ?failure, ?error, replies = ex.replies, "MIGRATE connection failed");
        if ex.replies == 0 && may_retry && error == LinkError::Broken {
            may_retry = false;
            continue;
        }
        return Transferred {
            restored: ex.restored,
            failure: ex.target_error.is_none().then_some(failure),
            target_error: ex.target_error,
        };
    }
}

/// What one attempt on one connection gave.
#[derive(Debug, Default)]
struct Exchange {
    /// How many RESTORE replies were read.
    replies: usize,
    restored: Vec<usize>,
    target_error: Option<Vec<u8>>,
    /// Set when the connection failed: in which direction, and how.
    broken: Option<(Failure, LinkError)>,
}

fn exchange(link: &mut Link, req: &Request<'_>, batch: &[u8], count: usize) -> Exchange {
    let mut ex = Exchange::default();
    let mut head = Vec::new();
    if let Some(password) = req.password {
        match req.username {
            Some(user) => put_command(&mut head, &[b"AUTH", user, password]),
            None => put_command(&mut head, &[b"AUTH", password]),
        }
    }
    let select = link.db != Some(req.db);
    if select {
        let mut db = itoa::Buffer::new();
        put_command(&mut head, &[b"SELECT", db.format(req.db).as_bytes()]);
    }
    if let Err(e) = link.send(&[&head, batch], req.timeout) {
        ex.broken = Some((Failure::Writing, e));
        return ex;
    }

    // An error to AUTH or SELECT is the error of every key: each is refused, or restored
    // where it was not meant to go.
    let mut setup_error = None;
    for expected in [req.password.is_some(), select] {
        if !expected {
            continue;
        }
        match link.read_line(req.timeout) {
            Ok(line) if line.starts_with(b"-") => {
                setup_error.get_or_insert(line);
            }
            Ok(_) => {}
            Err(e) => {
                ex.broken = Some((Failure::Reading, e));
                return ex;
            }
        }
    }
    for i in 0..count {
        let line = match link.read_line(req.timeout) {
            Ok(line) => line,
            Err(e) => {
                ex.broken = Some((Failure::Reading, e));
                break;
            }
        };
        ex.replies += 1;
        let error = setup_error
            .as_deref()
            .or_else(|| line.starts_with(b"-").then_some(&line[..]));
        match error {
            Some(e) => {
                ex.target_error.get_or_insert_with(|| e[1..].to_vec());
            }
            None => ex.restored.push(i),
        }
    }
    ex
}

/// Why there is no connection to the target.
///
/// Redis 7.0 replies "connecting" only when its non-blocking connect cannot even start (the
/// host does not resolve, no route): `connSocketBlockingConnect` returns success whether or
/// not the connection then completes in time. A refused or timed-out connection fails on the
/// write that follows, with the write's retry rule and its "writing" reply.
#[derive(Debug)]
enum Dial {
    Unresolved(io::Error),
    Failed(LinkError),
}

/// A connection to a target, kept between MIGRATEs.
#[derive(Debug)]
struct Link {
    stream: TcpStream,
    /// Bytes received past the last reply line read.
    pending: Vec<u8>,
    /// The database selected on the target, when known (Redis: `last_dbid`, -1 if unknown).
    db: Option<i64>,
    last_use: Instant,
}

impl Link {
    /// Connects within `timeout`, trying each address the host resolves to.
    fn connect(host: &[u8], port: &[u8], timeout: Duration) -> Result<Link, Dial> {
        let unresolved = |what| Dial::Unresolved(io::Error::new(io::ErrorKind::InvalidInput, what));
        let host = std::str::from_utf8(host).map_err(|_| unresolved("host is not UTF-8"))?;
        // getaddrinfo refuses a negative port; glibc takes a larger one modulo 65536, which
        // Redis then dials. Here it is refused, as a port with no listener would be.
        let port = match atoi(port) {
            n if n < 0 => return Err(unresolved("negative port")),
            n => u16::try_from(n).map_err(|_| Dial::Failed(LinkError::Broken))?,
        };
        let addrs = (host, port).to_socket_addrs().map_err(Dial::Unresolved)?;
        let mut last = unresolved("host resolves to no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Link {
                        stream,
                        pending: Vec::new(),
                        db: None,
                        last_use: Instant::now(),
                    });
                }
                // Fails at once, before any waiting: for Redis too.
                Err(e) if e.kind() == io::ErrorKind::NetworkUnreachable => {
                    last = Dial::Unresolved(e)
                }
                Err(e) => last = Dial::Failed(e.into()),
            }
        }
        Err(last)
    }

    /// Writes all of `parts`; `timeout` bounds each wait for the socket to take more.
    fn send(&mut self, parts: &[&[u8]], timeout: Duration) -> Result<(), LinkError> {
        self.stream.set_write_timeout(Some(timeout))?;
        for part in parts {
            self.stream.write_all(part)?;
        }
        Ok(())
    }

    /// Reads one reply line, without its CRLF; `timeout` bounds each wait for more bytes.
    fn read_line(&mut self, timeout: Duration) -> Result<Vec<u8>, LinkError> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut scanned = 0;
        loop {
            if let Some(at) = self.pending[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + at;
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            scanned = self.pending.len();
            if scanned > MAX_REPLY_LINE {
                return Err(LinkError::Garbled);
            }
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(LinkError::Broken),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The cached connections by `host:port`. A connection in use is taken out, so it is never
/// shared, and put back only after a clean exchange.
static LINKS: Mutex<BTreeMap<Vec<u8>, Link>> = Mutex::new(BTreeMap::new());

/// The cached connection to `name`, if any. Connections unused for [`LINK_IDLE`] are closed
/// first.
fn checkout(name: &[u8]) -> Option<Link> {
    let mut links = LINKS.lock();
    links.retain(|_, link| link.last_use.elapsed() <= LINK_IDLE);
    links.remove(name)
}

/// Caches `link` for the next MIGRATE to `name`, closing the least recently used connection
/// when the cache is full (Redis closes a random one).
fn checkin(name: Vec<u8>, mut link: Link) {
    link.last_use = Instant::now();
    let mut links = LINKS.lock();
    if links.len() >= MAX_LINKS && !links.contains_key(&name) {
        let oldest = links
            .iter()
            .min_by_key(|(_, l)| l.last_use)
            .map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            links.remove(&oldest);
        }
    }
    links.insert(name, link);
}

/// Appends `args` as a RESP multibulk.
fn put_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut n = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(n.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(n.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// C's `atoi`, which Redis applies to the port: leading blanks, a sign, then digits up to the
/// first non-digit; 0 when there are none.
fn atoi(s: &[u8]) -> i64 {
    let s = s.trim_ascii_start();
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, s),
    };
    let n = digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0i64, |n, &d| {
            n.saturating_mul(10).saturating_add((d - b'0') as i64)
        });
    if negative {
        -n
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn parse_err(words: &[&str]) -> String {
        let a = args(words);
        match Request::parse(&a) {
            Ok(r) => panic!("{words:?} parsed: {r:?}"),
            Err(e) => String::from_utf8_lossy(&e.0).into_owned(),
        }
    }

    #[test]
    fn options_then_timeout_then_db() {
        let a = args(&[
            "MIGRATE", "h", "1", "", "3", "0", "copy", "REPLACE", "AUTH2", "u", "p", "AUTH", "q",
            "KEYS", "a", "COPY",
        ]);
        let r = Request::parse(&a).expect("valid");
        assert!(r.copy && r.replace);
        // AUTH after AUTH2 replaces the password only, as in Redis.
        assert_eq!(r.username, Some(&b"u"[..]));
        assert_eq!(r.password, Some(&b"q"[..]));
        assert_eq!(r.keys, &args(&["a", "COPY"])[..]);
        assert_eq!(r.db, 3);
        assert_eq!(r.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(r.link_name(), b"h:1");

        assert_eq!(
            parse_err(&["MIGRATE", "h", "1", "k", "x", "y", "BOGUS"]),
            errors::SYNTAX
        );
        assert_eq!(
            parse_err(&["MIGRATE", "h", "1", "k", "0", "5", "AUTH"]),
            errors::SYNTAX
        );
        assert_eq!(
            parse_err(&["MIGRATE", "h", "1", "k", "0", "5", "AUTH2", "u"]),
            errors::SYNTAX
        );
        assert_eq!(
            parse_err(&["MIGRATE", "h", "1", "k", "x", "y"]),
            errors::NOT_INTEGER
        );
        assert_eq!(
            parse_err(&["MIGRATE", "h", "1", "k", "x", "5"]),
            errors::NOT_INTEGER
        );
        assert!(
            parse_err(&["MIGRATE", "h", "1", "k", "0", "5", "KEYS", "a"])
                .starts_with("ERR When using MIGRATE KEYS option")
        );
    }

    #[test]
    fn atoi_reads_like_c() {
        assert_eq!(atoi(b"6379"), 6379);
        assert_eq!(atoi(b"  +12abc"), 12);
        assert_eq!(atoi(b"-3"), -3);
        assert_eq!(atoi(b"x1"), 0);
    }

    /// A connected pair: our link and the peer's socket.
    fn pair() -> (Link, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port().to_string();
        let link =
            Link::connect(b"127.0.0.1", port.as_bytes(), Duration::from_secs(5)).expect("connect");
        let (peer, _) = listener.accept().expect("accept");
        (link, peer)
    }

    #[test]
    fn reply_lines_are_split_and_bounded() {
        let (mut link, mut peer) = pair();
        let t = Duration::from_secs(5);
        peer.write_all(b"+OK\r\n-ERR x\r\n+OK\n").expect("write");
        assert_eq!(link.read_line(t), Ok(b"+OK".to_vec()));
        assert_eq!(link.read_line(t), Ok(b"-ERR x".to_vec()));
        assert_eq!(link.read_line(t), Ok(b"+OK".to_vec()));
        peer.write_all(&[b'x'; MAX_REPLY_LINE + 10]).expect("write");
        assert_eq!(link.read_line(t), Err(LinkError::Garbled));
    }

    #[test]
    fn silence_is_a_timeout_and_a_close_is_broken() {
        let (mut link, peer) = pair();
        assert_eq!(
            link.read_line(Duration::from_millis(50)),
            Err(LinkError::Timeout)
        );
        drop(peer);
        assert_eq!(
            link.read_line(Duration::from_secs(5)),
            Err(LinkError::Broken)
        );
    }

    #[test]
    fn only_an_address_that_cannot_be_dialed_is_a_connect_error() {
        let t = Duration::from_secs(5);
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port().to_string()
        };
        let dial = |host: &[u8], port: &[u8]| Link::connect(host, port, t).map(|_| ());
        assert!(matches!(dial(b"", b"1"), Err(Dial::Unresolved(_))));
        assert!(matches!(
            dial(b"127.0.0.1", b"-5"),
            Err(Dial::Unresolved(_))
        ));
        assert!(matches!(
            dial(b"127.0.0.1", b"70000"),
            Err(Dial::Failed(LinkError::Broken))
        ));
        assert!(matches!(
            dial(b"127.0.0.1", closed.as_bytes()),
            Err(Dial::Failed(LinkError::Broken))
        ));
    }

    #[test]
    fn idle_connections_are_closed_on_the_next_use() {
        let (mut link, _peer) = pair();
        let name = b"idle-test:1".to_vec();
        link.db = Some(0);
        checkin(name.clone(), link);
        assert!(checkout(&name).is_some_and(|l| l.db == Some(0)));
        let (link, _peer) = pair();
        checkin(name.clone(), link);
        let Some(long_ago) = Instant::now().checked_sub(LINK_IDLE + Duration::from_secs(1)) else {
            return; // a clock that started less than 11 s ago
        };
        if let Some(l) = LINKS.lock().get_mut(&name) {
            l.last_use = long_ago;
        }
        assert!(checkout(&name).is_none());
    }

    #[test]
    fn an_error_to_auth_is_every_keys_error() {
        let (mut link, mut peer) = pair();
        let a = args(&[
            "MIGRATE", "h", "1", "", "0", "5000", "AUTH", "pw", "KEYS", "a", "b",
        ]);
        let req = Request::parse(&a).expect("valid");
        peer.write_all(b"-WRONGPASS nope\r\n+OK\r\n+OK\r\n+OK\r\n")
            .expect("write");
        let ex = exchange(&mut link, &req, b"", 2);
        assert_eq!(ex.replies, 2);
        assert!(ex.restored.is_empty());
        assert_eq!(ex.target_error.as_deref(), Some(&b"WRONGPASS nope"[..]));
        assert_eq!(ex.broken, None);
    }

    #[test]
    fn later_errors_keep_earlier_successes() {
        let (mut link, mut peer) = pair();
        link.db = Some(0);
        let a = args(&["MIGRATE", "h", "1", "", "0", "5000", "KEYS", "a", "b", "c"]);
        let req = Request::parse(&a).expect("valid");
        peer.write_all(b"+OK\r\n-BUSYKEY exists\r\n")
            .expect("write");
        drop(peer);
        let ex = exchange(&mut link, &req, b"", 3);
        assert_eq!(ex.replies, 2);
        assert_eq!(ex.restored, vec![0]);
        assert_eq!(ex.target_error.as_deref(), Some(&b"BUSYKEY exists"[..]));
        assert_eq!(ex.broken, Some((Failure::Reading, LinkError::Broken)));
    }
}
