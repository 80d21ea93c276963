//! Configuration, the way `valkey-server` takes it: a file of `directive value...` lines and
//! `--directive value...` arguments, applied in that order. Every directive has a kind that
//! validates and normalises its value; an unknown directive or a bad value is an error that
//! names it. `CONFIG GET`/`CONFIG SET` read and change the same table.

use std::collections::BTreeMap;
use std::fmt;

/// How a directive's value is checked and printed.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    /// A byte size with Valkey's units (`1k`, `1kb`, `1mb`, `1gb`...).
    Memory,
    Enum(&'static [&'static str]),
    Str,
    /// `save`: empty, or pairs of `<seconds> <changes>`.
    Save,
    /// `bind`: one or more addresses.
    AddrList,
    /// `replicaof`: `<host> <port>`, or `no one`.
    HostPort,
    /// A listening address `<host>:<port>` (`[::1]:9121` for IPv6), or empty for none.
    ListenAddr,
}

struct Directive {
    name: &'static str,
    alias: Option<&'static str>,
    kind: Kind,
    default: &'static str,
    /// Whether CONFIG SET may change it while running.
    mutable: bool,
}

const fn d(name: &'static str, kind: Kind, default: &'static str, mutable: bool) -> Directive {
    Directive {
        name,
        alias: None,
        kind,
        default,
        mutable,
    }
}

const fn aliased(
    name: &'static str,
    alias: &'static str,
    kind: Kind,
    default: &'static str,
    mutable: bool,
) -> Directive {
    Directive {
        name,
        alias: Some(alias),
        kind,
        default,
        mutable,
    }
}

const YES_NO_LOCAL: &[&str] = &["yes", "no", "local"];
const I32: Kind = Kind::Int {
    min: 0,
    max: i32::MAX as i64,
};

/// Every directive the node accepts. Some are recorded for work that later uses them
/// (cluster mode, replication, persistence); their values are validated all the same.
static DIRECTIVES: &[Directive] = &[
    d("port", Kind::Int { min: 0, max: 65535 }, "6379", false),
    d("bind", Kind::AddrList, "* -::*", false),
    d("dir", Kind::Str, "./", true),
    d("dbfilename", Kind::Str, "dump.rdb", true),
    d("save", Kind::Save, "3600 1 300 100 60 10000", true),
    d("appendonly", Kind::Bool, "no", true),
    d("appendfilename", Kind::Str, "appendonly.aof", false),
    d("appenddirname", Kind::Str, "appendonlydir", false),
    d(
        "appendfsync",
        Kind::Enum(&["always", "everysec", "no"]),
        "everysec",
        true,
    ),
    d("aof-load-truncated", Kind::Bool, "yes", true),
    d("aof-use-rdb-preamble", Kind::Bool, "yes", true),
    d("auto-aof-rewrite-percentage", I32, "100", true),
    d("auto-aof-rewrite-min-size", Kind::Memory, "67108864", true),
    d("no-appendfsync-on-rewrite", Kind::Bool, "no", true),
    d("rdbcompression", Kind::Bool, "yes", true),
    d("rdbchecksum", Kind::Bool, "yes", false),
    d("requirepass", Kind::Str, "", true),
    d("masterauth", Kind::Str, "", true),
    d("masteruser", Kind::Str, "", true),
    d("protected-mode", Kind::Bool, "yes", true),
    d(
        "maxclients",
        Kind::Int {
            min: 1,
            max: i32::MAX as i64,
        },
        "10000",
        true,
    ),
    d("timeout", I32, "0", true),
    d("tcp-keepalive", I32, "300", true),
    d("tcp-backlog", I32, "511", false),
    d("daemonize", Kind::Bool, "no", false),
    d("pidfile", Kind::Str, "", false),
    d(
        "databases",
        Kind::Int {
            min: 1,
            max: i32::MAX as i64,
        },
        "16",
        false,
    ),
    d("hz", Kind::Int { min: 1, max: 500 }, "10", true),
    d(
        "loglevel",
        Kind::Enum(&["debug", "verbose", "notice", "warning", "nothing"]),
        "notice",
        true,
    ),
    d("logfile", Kind::Str, "", false),
    d("proto-max-bulk-len", Kind::Memory, "536870912", true),
    d(
        "client-query-buffer-limit",
        Kind::Memory,
        "1073741824",
        true,
    ),
    d("maxmemory", Kind::Memory, "0", true),
    d(
        "maxmemory-policy",
        Kind::Enum(&[
            "volatile-lru",
            "allkeys-lru",
            "volatile-lfu",
            "allkeys-lfu",
            "volatile-random",
            "allkeys-random",
            "volatile-ttl",
            "noeviction",
        ]),
        "noeviction",
        true,
    ),
    d(
        "enable-debug-command",
        Kind::Enum(YES_NO_LOCAL),
        "no",
        false,
    ),
    d(
        "enable-protected-configs",
        Kind::Enum(YES_NO_LOCAL),
        "no",
        false,
    ),
    d("io-threads", Kind::Int { min: 1, max: 128 }, "1", false),
    d("availability-zone", Kind::Str, "", true),
    d("cluster-enabled", Kind::Bool, "no", false),
    d("cluster-config-file", Kind::Str, "nodes.conf", false),
    d(
        "cluster-node-timeout",
        Kind::Int {
            min: 0,
            max: i64::MAX,
        },
        "15000",
        true,
    ),
    d("cluster-port", Kind::Int { min: 0, max: 65535 }, "0", false),
    d("cluster-announce-ip", Kind::Str, "", true),
    d(
        "cluster-announce-port",
        Kind::Int { min: 0, max: 65535 },
        "0",
        true,
    ),
    d(
        "cluster-announce-bus-port",
        Kind::Int { min: 0, max: 65535 },
        "0",
        true,
    ),
    d("cluster-require-full-coverage", Kind::Bool, "yes", true),
    d("cluster-allow-reads-when-down", Kind::Bool, "no", true),
    d("cluster-replica-validity-factor", I32, "10", true),
    d("cluster-migration-barrier", I32, "1", true),
    d("cluster-allow-replica-migration", Kind::Bool, "yes", true),
    aliased(
        "cluster-replica-no-failover",
        "cluster-slave-no-failover",
        Kind::Bool,
        "no",
        true,
    ),
    d("repl-backlog-size", Kind::Memory, "1048576", true),
    d("repl-backlog-ttl", I32, "3600", true),
    d(
        "repl-ping-replica-period",
        Kind::Int {
            min: 1,
            max: i32::MAX as i64,
        },
        "10",
        true,
    ),
    d(
        "repl-timeout",
        Kind::Int {
            min: 1,
            max: i32::MAX as i64,
        },
        "60",
        true,
    ),
    d("repl-diskless-sync", Kind::Bool, "yes", true),
    d("repl-diskless-sync-delay", I32, "5", true),
    d(
        "repl-diskless-load",
        Kind::Enum(&["disabled", "on-empty-db", "swapdb"]),
        "disabled",
        true,
    ),
    aliased("replicaof", "slaveof", Kind::HostPort, "", false),
    aliased(
        "replica-read-only",
        "slave-read-only",
        Kind::Bool,
        "yes",
        true,
    ),
    aliased(
        "replica-serve-stale-data",
        "slave-serve-stale-data",
        Kind::Bool,
        "yes",
        true,
    ),
    aliased("replica-priority", "slave-priority", I32, "100", true),
    aliased(
        "min-replicas-to-write",
        "min-slaves-to-write",
        I32,
        "0",
        true,
    ),
    aliased(
        "min-replicas-max-lag",
        "min-slaves-max-lag",
        I32,
        "10",
        true,
    ),
    d("replica-announce-ip", Kind::Str, "", true),
    d(
        "replica-announce-port",
        Kind::Int { min: 0, max: 65535 },
        "0",
        true,
    ),
    d("replica-announced", Kind::Bool, "yes", true),
    aliased(
        "hash-max-listpack-entries",
        "hash-max-ziplist-entries",
        Kind::Memory,
        "512",
        true,
    ),
    aliased(
        "hash-max-listpack-value",
        "hash-max-ziplist-value",
        Kind::Memory,
        "64",
        true,
    ),
    aliased(
        "list-max-listpack-size",
        "list-max-ziplist-size",
        Kind::Int {
            min: i32::MIN as i64,
            max: i32::MAX as i64,
        },
        "-2",
        true,
    ),
    d("list-compress-depth", I32, "0", true),
    d("set-max-intset-entries", Kind::Memory, "512", true),
    d("set-max-listpack-entries", Kind::Memory, "128", true),
    d("set-max-listpack-value", Kind::Memory, "64", true),
    aliased(
        "zset-max-listpack-entries",
        "zset-max-ziplist-entries",
        Kind::Memory,
        "128",
        true,
    ),
    aliased(
        "zset-max-listpack-value",
        "zset-max-ziplist-value",
        Kind::Memory,
        "64",
        true,
    ),
    d("lazyfree-lazy-eviction", Kind::Bool, "no", true),
    d("lazyfree-lazy-expire", Kind::Bool, "no", true),
    d("lazyfree-lazy-server-del", Kind::Bool, "no", true),
    d("lazyfree-lazy-user-del", Kind::Bool, "no", true),
    d("lazyfree-lazy-user-flush", Kind::Bool, "no", true),
    d("latency-tracking", Kind::Bool, "yes", true),
    d("notify-keyspace-events", Kind::Str, "", true),
    // Lagwise's own: the admin HTTP listener (/live, /ready, /metrics); empty for none.
    d("admin-listen", Kind::ListenAddr, "", false),
];

/// A configuration error, worded for the operator and naming the directive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("Bad directive or wrong number of arguments: '{0}'")]
    Unknown(String),
    #[error("'{name}': {reason}")]
    BadValue { name: String, reason: String },
    #[error("'{0}': can't set immutable config")]
    Immutable(String),
}

fn bad(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn find(name: &str) -> Option<&'static Directive> {
    DIRECTIVES.iter().find(|d| {
        d.name.eq_ignore_ascii_case(name) || d.alias.is_some_and(|a| a.eq_ignore_ascii_case(name))
    })
}

/// Parses a byte size with Valkey's units: `k`=1000, `kb`=1024, `m`, `mb`, `g`, `gb`.
pub fn parse_memory(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let units: [(&str, u64); 6] = [
        ("kb", 1024),
        ("mb", 1024 * 1024),
        ("gb", 1024 * 1024 * 1024),
        ("k", 1000),
        ("m", 1000 * 1000),
        ("g", 1000 * 1000 * 1000),
    ];
    for (suffix, mul) in units {
        if let Some(num) = lower.strip_suffix(suffix) {
            return num.parse::<u64>().ok()?.checked_mul(mul);
        }
    }
    lower.parse::<u64>().ok()
}

/// Checks `args` against the directive's kind; returns the value as CONFIG GET prints it.
fn normalize(dir: &Directive, args: &[String]) -> Result<String, ConfigError> {
    let name = dir.name;
    let one = || -> Result<&str, ConfigError> {
        match args {
            [v] => Ok(v.as_str()),
            _ => Err(bad(name, "wrong number of arguments")),
        }
    };
    match dir.kind {
        Kind::Bool => match one()?.to_ascii_lowercase().as_str() {
            "yes" => Ok("yes".into()),
            "no" => Ok("no".into()),
            _ => Err(bad(name, "argument must be 'yes' or 'no'")),
        },
        Kind::Int { min, max } => {
            let v = one()?;
            let n: i64 = v
                .parse()
                .map_err(|_| bad(name, "argument couldn't be parsed into an integer"))?;
            if n < min || n > max {
                return Err(bad(
                    name,
                    format!("argument must be between {min} and {max} inclusive"),
                ));
            }
            Ok(n.to_string())
        }
        Kind::Memory => {
            let v = one()?;
            parse_memory(v)
                .map(|n| n.to_string())
                .ok_or_else(|| bad(name, "argument must be a memory value"))
        }
        Kind::Enum(options) => {
            let v = one()?.to_ascii_lowercase();
            if options.contains(&v.as_str()) {
                Ok(v)
            } else {
                Err(bad(
                    name,
                    format!(
                        "argument(s) must be one of the following: {}",
                        options.join(", ")
                    ),
                ))
            }
        }
        Kind::Str => Ok(one()?.to_string()),
        Kind::Save => {
            let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
            if words.is_empty() {
                return Ok(String::new());
            }
            if !words.len().is_multiple_of(2) || words.iter().any(|w| w.parse::<u64>().is_err()) {
                return Err(bad(name, "Invalid save parameters"));
            }
            Ok(words.join(" "))
        }
        Kind::AddrList => {
            let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
            if words.is_empty() || words.len() > 16 {
                return Err(bad(name, "Too many bind addresses specified."));
            }
            Ok(words.join(" "))
        }
        Kind::HostPort => {
            let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
            match words.as_slice() {
                [] => Ok(String::new()),
                [no, one] if no.eq_ignore_ascii_case("no") && one.eq_ignore_ascii_case("one") => {
                    Ok(String::new())
                }
                [host, port] => {
                    port.parse::<u16>()
                        .map_err(|_| bad(name, "Invalid master port"))?;
                    Ok(format!("{host} {port}"))
                }
                _ => Err(bad(name, "wrong number of arguments")),
            }
        }
        Kind::ListenAddr => {
            let v = one()?.trim();
            if v.is_empty() {
                return Ok(String::new());
            }
            let usage = "argument must be <host>:<port>, e.g. 0.0.0.0:9121 or [::]:9121";
            let (host, port) = v.rsplit_once(':').ok_or_else(|| bad(name, usage))?;
            let bracketed = host.starts_with('[') && host.ends_with(']');
            if host.is_empty() || (host.contains(':') && !bracketed) || port.parse::<u16>().is_err()
            {
                return Err(bad(name, usage));
            }
            Ok(v.to_string())
        }
    }
}

/// The node's configuration: every directive's current value, normalised.
#[derive(Clone)]
pub struct Config {
    values: BTreeMap<&'static str, String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passwords stay out of logs.
        f.debug_map()
            .entries(self.values.iter().map(|(k, v)| {
                let shown = if k.contains("pass") || k.contains("auth") {
                    "<hidden>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            values: DIRECTIVES
                .iter()
                .map(|d| (d.name, d.default.to_string()))
                .collect(),
        }
    }
}

/// Where a configuration line came from, for error messages.
#[derive(Debug, Clone)]
pub struct ConfigLineError {
    pub source: String,
    pub line: String,
    pub error: ConfigError,
}

impl fmt::Display for ConfigLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "*** FATAL CONFIG FILE ERROR ***\nReading the configuration file, at {}\n>>> '{}'\n{}",
            self.source, self.line, self.error
        )
    }
}

impl Config {
    /// Builds the configuration from the command line: an optional config file first, then
    /// `--directive value...` arguments, exactly as valkey-server reads them.
    pub fn from_args(args: &[String]) -> Result<Config, ConfigLineError> {
        let mut config = Config::default();
        let mut rest = args;
        if let Some(first) = rest.first() {
            if !first.starts_with("--") {
                let text = std::fs::read_to_string(first).map_err(|e| ConfigLineError {
                    source: format!("file '{first}'"),
                    line: String::new(),
                    error: bad("config file", e.to_string()),
                })?;
                for (i, line) in text.lines().enumerate() {
                    config.apply_line(line).map_err(|error| ConfigLineError {
                        source: format!("line {} of '{first}'", i + 1),
                        line: line.to_string(),
                        error,
                    })?;
                }
                rest = &rest[1..];
            }
        }
        // `--name a b --other c` → lines "name a b" and "other c".
        let mut lines: Vec<Vec<String>> = Vec::new();
        for arg in rest {
            if let Some(name) = arg.strip_prefix("--") {
                lines.push(vec![name.to_string()]);
            } else if let Some(line) = lines.last_mut() {
                line.push(arg.clone());
            } else {
                return Err(ConfigLineError {
                    source: "the command line".into(),
                    line: arg.clone(),
                    error: ConfigError::Unknown(arg.clone()),
                });
            }
        }
        for words in lines {
            config
                .apply(&words[0], &words[1..])
                .map_err(|error| ConfigLineError {
                    source: "the command line".into(),
                    line: words.join(" "),
                    error,
                })?;
        }
        Ok(config)
    }

    fn apply_line(&mut self, line: &str) -> Result<(), ConfigError> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let words = split_config_line(line)
            .ok_or_else(|| bad(line, "Unbalanced quotes in configuration line"))?;
        match words.split_first() {
            Some((name, args)) => self.apply(name, args),
            None => Ok(()),
        }
    }

    /// Sets a directive at start-up (immutable ones allowed).
    pub fn apply(&mut self, name: &str, args: &[String]) -> Result<(), ConfigError> {
        let dir = find(name).ok_or_else(|| ConfigError::Unknown(name.to_string()))?;
        let value = normalize(dir, args)?;
        self.values.insert(dir.name, value);
        Ok(())
    }

    /// CONFIG SET of several directives at once: all are validated first, then all applied,
    /// so a bad one changes nothing.
    pub fn set_many(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<&'static str>, ConfigError> {
        let mut staged: Vec<(&'static str, String)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let dir = find(name).ok_or_else(|| ConfigError::Unknown(name.clone()))?;
            if !dir.mutable {
                return Err(ConfigError::Immutable(dir.name.to_string()));
            }
            if staged.iter().any(|(n, _)| *n == dir.name) {
                return Err(bad(dir.name, "duplicate parameter"));
            }
            staged.push((dir.name, normalize(dir, std::slice::from_ref(value))?));
        }
        let names = staged.iter().map(|(n, _)| *n).collect();
        for (name, value) in staged {
            self.values.insert(name, value);
        }
        Ok(names)
    }

    /// `CONFIG GET` pattern matches (case-insensitive), including aliases matched by name.
    pub fn matching(&self, pattern: &[u8]) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for dir in DIRECTIVES {
            let value = self.values.get(dir.name).map(String::as_str).unwrap_or("");
            for name in std::iter::once(dir.name).chain(dir.alias) {
                if lagwise_shared::glob::matches(pattern, name.as_bytes(), true) {
                    out.push((name, value));
                }
            }
        }
        out
    }

    /// The directives that differ from their defaults, as config-file lines (CONFIG REWRITE).
    pub fn render_non_default(&self) -> String {
        let mut out = String::from("# Written by CONFIG REWRITE.\n");
        for dir in DIRECTIVES {
            let value = self.get(dir.name);
            if value != dir.default {
                let quoted = if value.is_empty()
                    || value.contains(' ')
                        && !matches!(dir.kind, Kind::Save | Kind::AddrList | Kind::HostPort)
                {
                    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
                } else {
                    value.to_string()
                };
                out.push_str(&format!("{} {}\n", dir.name, quoted));
            }
        }
        out
    }

    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn get_bool(&self, name: &str) -> bool {
        self.get(name) == "yes"
    }

    pub fn get_int(&self, name: &str) -> i64 {
        self.get(name).parse().unwrap_or(0)
    }

    pub fn get_u64(&self, name: &str) -> u64 {
        self.get(name).parse().unwrap_or(0)
    }

    pub fn port(&self) -> u16 {
        self.get_int("port") as u16
    }

    /// Addresses to listen on. Valkey's `*` and `-::*` (optional IPv6) map to the wildcard.
    pub fn bind_addrs(&self) -> Vec<(String, bool)> {
        self.get("bind")
            .split_whitespace()
            .map(|a| {
                let optional = a.starts_with('-');
                let a = a.trim_start_matches('-');
                let host = match a {
                    "*" => "0.0.0.0".to_string(),
                    "::*" => "::".to_string(),
                    other => other.to_string(),
                };
                (host, optional)
            })
            .collect()
    }
}

/// Splits a config line into words with Valkey's quoting (double and single quotes).
fn split_config_line(line: &str) -> Option<Vec<String>> {
    let line = bytes::Bytes::copy_from_slice(line.as_bytes());
    let mut buf = bytes::BytesMut::from(&line[..]);
    buf.extend_from_slice(b"\n");
    use tokio_util::codec::Decoder;
    let mut dec = lagwise_shared::codec::RequestDecoder::default();
    match dec.decode(&mut buf) {
        Ok(Some(req)) => Some(
            req.args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        ),
        Ok(None) => Some(Vec::new()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_line_directives_override_defaults() {
        let c = Config::from_args(&args(&[
            "--port",
            "7000",
            "--save",
            "",
            "--bind",
            "127.0.0.1",
            "::1",
        ]))
        .expect("valid");
        assert_eq!(c.port(), 7000);
        assert_eq!(c.get("save"), "");
        assert_eq!(c.get("bind"), "127.0.0.1 ::1");
    }

    #[test]
    fn unknown_directive_and_bad_values_name_the_setting() {
        let e = Config::from_args(&args(&["--no-such", "1"])).expect_err("unknown");
        assert!(e.to_string().contains("no-such"), "{e}");
        let e = Config::from_args(&args(&["--port", "seven"])).expect_err("bad int");
        assert!(e.to_string().contains("'port'"), "{e}");
        let e = Config::from_args(&args(&["--appendonly", "maybe"])).expect_err("bad bool");
        assert!(e.to_string().contains("appendonly"), "{e}");
    }

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("1mb"), Some(1 << 20));
        assert_eq!(parse_memory("1k"), Some(1000));
        assert_eq!(parse_memory("10GB"), Some(10 << 30));
        assert_eq!(parse_memory("x"), None);
    }

    #[test]
    fn config_set_is_all_or_nothing() {
        let mut c = Config::default();
        let err = c
            .set_many(&[
                ("timeout".into(), "5".into()),
                ("maxclients".into(), "x".into()),
            ])
            .expect_err("bad");
        assert!(matches!(err, ConfigError::BadValue { .. }));
        assert_eq!(c.get("timeout"), "0");
        assert!(matches!(
            c.set_many(&[("cluster-enabled".into(), "yes".into())]),
            Err(ConfigError::Immutable(_))
        ));
    }

    #[test]
    fn admin_listen_is_a_host_and_port_fixed_at_start() {
        assert_eq!(Config::default().get("admin-listen"), "");
        let mut c = Config::from_args(&args(&["--admin-listen", "127.0.0.1:9121"])).expect("valid");
        assert_eq!(c.get("admin-listen"), "127.0.0.1:9121");
        let v6 = Config::from_args(&args(&["--admin-listen", "[::1]:9121"])).expect("IPv6");
        assert_eq!(v6.get("admin-listen"), "[::1]:9121");
        for bad in [
            "9121",
            "127.0.0.1",
            "host:port",
            ":9121",
            "::1:9121",
            "a:70000",
        ] {
            let e = Config::from_args(&args(&["--admin-listen", bad])).expect_err(bad);
            assert!(e.to_string().contains("'admin-listen'"), "{bad}: {e}");
        }
        assert!(matches!(
            c.set_many(&[("admin-listen".into(), "127.0.0.1:9122".into())]),
            Err(ConfigError::Immutable(_))
        ));
    }

    #[test]
    fn aliases_and_replicaof() {
        let c = Config::from_args(&args(&["--slaveof", "10.0.0.1", "6379"])).expect("valid");
        assert_eq!(c.get("replicaof"), "10.0.0.1 6379");
        let names: Vec<_> = c
            .matching(b"slave-read-only")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["slave-read-only"]);
    }
}
