//! The command table: every command's arity, flags and key positions.
//!
//! The facts are Redis 7.0's (what `COMMAND INFO` reports), transcribed into
//! `command_table/generated.rs` by `shared/tools/gen_command_table.py`. The node uses the table
//! to check arity and answer `COMMAND`; the proxy uses it to find keys and decide read or write.

use std::collections::HashMap;
use std::sync::OnceLock;

mod generated;
#[cfg(test)]
mod tests;

/// Command flags, as Redis 7 names them in `COMMAND INFO`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u32);

impl Flags {
    pub const WRITE: Flags = Flags(1 << 0);
    pub const READONLY: Flags = Flags(1 << 1);
    pub const DENYOOM: Flags = Flags(1 << 2);
    pub const MODULE: Flags = Flags(1 << 3);
    pub const ADMIN: Flags = Flags(1 << 4);
    pub const PUBSUB: Flags = Flags(1 << 5);
    pub const NOSCRIPT: Flags = Flags(1 << 6);
    pub const BLOCKING: Flags = Flags(1 << 7);
    pub const LOADING: Flags = Flags(1 << 8);
    pub const STALE: Flags = Flags(1 << 9);
    pub const SKIP_MONITOR: Flags = Flags(1 << 10);
    pub const SKIP_SLOWLOG: Flags = Flags(1 << 11);
    pub const ASKING: Flags = Flags(1 << 12);
    pub const FAST: Flags = Flags(1 << 13);
    pub const NO_AUTH: Flags = Flags(1 << 14);
    pub const MAY_REPLICATE: Flags = Flags(1 << 15);
    pub const SENTINEL: Flags = Flags(1 << 16);
    pub const ONLY_SENTINEL: Flags = Flags(1 << 17);
    pub const NO_MANDATORY_KEYS: Flags = Flags(1 << 18);
    pub const PROTECTED: Flags = Flags(1 << 19);
    pub const NO_ASYNC_LOADING: Flags = Flags(1 << 20);
    pub const NO_MULTI: Flags = Flags(1 << 21);
    pub const MOVABLE_KEYS: Flags = Flags(1 << 22);
    pub const ALLOW_BUSY: Flags = Flags(1 << 23);

    /// Names in the order Redis prints them in `COMMAND INFO`.
    const NAMES: [(Flags, &'static str); 24] = [
        (Flags::WRITE, "write"),
        (Flags::READONLY, "readonly"),
        (Flags::DENYOOM, "denyoom"),
        (Flags::MODULE, "module"),
        (Flags::ADMIN, "admin"),
        (Flags::PUBSUB, "pubsub"),
        (Flags::NOSCRIPT, "noscript"),
        (Flags::BLOCKING, "blocking"),
        (Flags::LOADING, "loading"),
        (Flags::STALE, "stale"),
        (Flags::SKIP_MONITOR, "skip_monitor"),
        (Flags::SKIP_SLOWLOG, "skip_slowlog"),
        (Flags::ASKING, "asking"),
        (Flags::FAST, "fast"),
        (Flags::NO_AUTH, "no_auth"),
        (Flags::MAY_REPLICATE, "may_replicate"),
        (Flags::SENTINEL, "sentinel"),
        (Flags::ONLY_SENTINEL, "only_sentinel"),
        (Flags::NO_MANDATORY_KEYS, "no_mandatory_keys"),
        (Flags::PROTECTED, "protected"),
        (Flags::NO_ASYNC_LOADING, "no_async_loading"),
        (Flags::NO_MULTI, "no_multi"),
        (Flags::MOVABLE_KEYS, "movablekeys"),
        (Flags::ALLOW_BUSY, "allow_busy"),
    ];

    pub const fn empty() -> Flags {
        Flags(0)
    }

    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// The flag names set in `self`, in Redis's order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Where the search for a key spec's keys begins (Redis 7 key specs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginSearch {
    Index(i32),
    Keyword {
        keyword: &'static str,
        start_from: i32,
    },
    Unknown,
}

/// How a key spec's keys are found once the search has begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindKeys {
    Range {
        last_key: i32,
        key_step: i32,
        limit: i32,
    },
    Keynum {
        keynum_idx: i32,
        first_key: i32,
        key_step: i32,
    },
    Unknown,
}

/// One key specification: which arguments are keys and how they are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Key-spec flags as Redis names them: "RW", "RO", "OW", "RM", "access", "update", "insert",
    /// "delete", "not_key", "incomplete", "variable_flags".
    pub flags: &'static [&'static str],
    pub begin_search: BeginSearch,
    pub find_keys: FindKeys,
}

/// `COMMAND DOCS` facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Docs {
    pub summary: &'static str,
    pub since: &'static str,
    pub group: &'static str,
    pub complexity: &'static str,
}

/// One command (or subcommand, named `parent|sub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Lowercase, as `COMMAND INFO` prints it.
    pub name: &'static str,
    /// Positive: exact argument count (with the name); negative: at least `-arity`.
    pub arity: i32,
    pub flags: Flags,
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    /// ACL categories with their `@` prefix.
    pub acl_categories: &'static [&'static str],
    /// Command tips, e.g. "request_policy:all_shards", "response_policy:agg_sum", "nondeterministic_output".
    pub tips: &'static [&'static str],
    pub key_specs: &'static [KeySpec],
    pub subcommands: &'static [CommandSpec],
    pub docs: Docs,
}

/// Whether `argc` arguments (counting the command name) satisfy `arity` as COMMAND INFO
/// reports it: positive, exactly that many; negative, at least `-arity`.
pub fn arity_allows(arity: i64, argc: usize) -> bool {
    let argc = argc as i64;
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

impl CommandSpec {
    /// Whether `argc` arguments (counting the command name) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        arity_allows(i64::from(self.arity), argc)
    }

    /// The subcommand named `sub` (any case), if this command has subcommands.
    pub fn subcommand(&self, sub: &[u8]) -> Option<&'static CommandSpec> {
        self.subcommands.iter().find(|s| {
            s.name
                .split_once('|')
                .is_some_and(|(_, n)| n.as_bytes().eq_ignore_ascii_case(sub))
        })
    }

    pub fn is_write(&self) -> bool {
        self.flags.contains(Flags::WRITE)
    }

    pub fn is_readonly(&self) -> bool {
        self.flags.contains(Flags::READONLY)
    }

    /// The key positions in `args` (args[0] is the command name), found the way Redis 7.0's
    /// `COMMAND GETKEYS` finds them, and in the same order.
    ///
    /// A command with subcommands hands over to the subcommand named by `args[1]`. Otherwise
    /// the key specs are used, unless one of them has `variable_flags`. When any spec is invalid
    /// for these arguments (begin search or find keys "unknown", an `incomplete` spec, a key
    /// count that is not a non-negative integer, a key range that is empty or runs past the
    /// end), Redis throws away what the specs found and asks the command's own key-finding
    /// procedure (SORT, MIGRATE, EVAL, ZUNIONSTORE, XREAD, ...); commands without one then
    /// have no keys. This does the same, so positions are always inside `args`.
    pub fn key_positions(&self, args: &[impl AsRef<[u8]>], out: &mut Vec<usize>) {
        out.clear();
        if !self.subcommands.is_empty() {
            if let Some(sub) = args.get(1).and_then(|s| self.subcommand(s.as_ref())) {
                sub.key_positions(args, out);
            }
            return;
        }
        let has_keyspec = self.key_specs.iter().any(|s| !s.flags.contains(&"not_key"));
        let has_varflags = self
            .key_specs
            .iter()
            .any(|s| s.flags.contains(&"variable_flags"));
        if has_keyspec && !has_varflags {
            if keys_from_specs(self.key_specs, args, out) {
                return;
            }
            out.clear();
        }
        keys_from_procedure(self.name, args, out);

        /// Redis's `getKeysUsingKeySpecs`: false when a spec is invalid for these arguments.
        fn keys_from_specs<A: AsRef<[u8]>>(
            specs: &[KeySpec],
            args: &[A],
            out: &mut Vec<usize>,
        ) -> bool {
            let argc = args.len() as i64;
            let is = |i: i64, word: &str| {
                args[i as usize]
                    .as_ref()
                    .eq_ignore_ascii_case(word.as_bytes())
            };
            for spec in specs {
                if spec.flags.contains(&"not_key") {
                    continue;
                }
                let mut first = match spec.begin_search {
                    BeginSearch::Index(i) => i64::from(i),
                    BeginSearch::Keyword {
                        keyword,
                        start_from,
                    } => {
                        // Forward from `start_from` to the next-to-last argument (a keyword
                        // in last place has no key after it), or backward from `argc + start_from`
                        // down to args[2] (Redis 7.0.15 never looks at args[1] here).
                        let from = i64::from(start_from);
                        let found = if from > 0 {
                            (from..argc - 1).find(|&i| is(i, keyword))
                        } else if argc + from < argc {
                            (2..=argc + from).rev().find(|&i| is(i, keyword))
                        } else {
                            None
                        };
                        match found {
                            Some(i) => i + 1,
                            None => continue,
                        }
                    }
                    BeginSearch::Unknown => return false,
                };
                let (last, step) = match spec.find_keys {
                    FindKeys::Range {
                        last_key,
                        key_step,
                        limit,
                    } => {
                        let last_key = i64::from(last_key);
                        let last = if last_key >= 0 {
                            first + last_key
                        } else if limit == 0 {
                            argc + last_key
                        } else {
                            // Keys take 1/limit of the remaining arguments (XREAD's STREAMS).
                            first + (argc - first) / i64::from(limit) + last_key
                        };
                        (last, key_step)
                    }
                    FindKeys::Keynum {
                        keynum_idx,
                        first_key,
                        key_step,
                    } => {
                        let idx = first + i64::from(keynum_idx);
                        if idx >= argc {
                            return false;
                        }
                        let Some(numkeys) = parse_numkeys(args[idx as usize].as_ref()) else {
                            return false;
                        };
                        first += i64::from(first_key);
                        // Redis narrows the count to a C int here.
                        (first + i64::from(numkeys as i32) - 1, key_step)
                    }
                    FindKeys::Unknown => return false,
                };
                if last >= argc || last < first || first >= argc {
                    return false;
                }
                let step = i64::from(step.max(1));
                let mut i = first;
                while i <= last {
                    out.push(i as usize);
                    i += step;
                }
                if spec.flags.contains(&"incomplete") {
                    return false;
                }
            }
            true
        }

        /// Redis's `string2ll`, for a key count: "0" or a decimal without sign or leading
        /// zeros that fits an i64 (negative counts are invalid anyway).
        fn parse_numkeys(s: &[u8]) -> Option<i64> {
            match s {
                b"0" => Some(0),
                [b'1'..=b'9', ..] if s.len() <= 20 => s.iter().try_fold(0i64, |n, &c| {
                    c.is_ascii_digit()
                        .then(|| n.checked_mul(10)?.checked_add(i64::from(c - b'0')))
                        .flatten()
                }),
                _ => None,
            }
        }

        /// C's `atoi` as glibc does it (`(int) strtol(s, NULL, 10)`): leading white space, a
        /// sign, digits up to the first non-digit, clamped to the long range, then narrowed.
        fn atoi(s: &[u8]) -> i32 {
            let mut rest = s;
            while let [c, tail @ ..] = rest {
                if !matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
                    break;
                }
                rest = tail;
            }
            let negative = rest.first() == Some(&b'-');
            if matches!(rest.first(), Some(b'-' | b'+')) {
                rest = &rest[1..];
            }
            let mut n: i64 = 0;
            for &c in rest.iter().take_while(|c| c.is_ascii_digit()) {
                let d = i64::from(c - b'0');
                n = if negative {
                    n.saturating_mul(10).saturating_sub(d)
                } else {
                    n.saturating_mul(10).saturating_add(d)
                };
            }
            n as i32
        }

        /// The command's own key-finding procedure (`getkeys_proc` in Redis 7.0).
        fn keys_from_procedure<A: AsRef<[u8]>>(name: &str, args: &[A], out: &mut Vec<usize>) {
            let argc = args.len();
            let is = |i: usize, word: &str| args[i].as_ref().eq_ignore_ascii_case(word.as_bytes());
            // `genericGetKeys`: `count` keys from `first` (the count at `count_at`), then the
            // destination key at `store` if there is one; none if the count is out of range.
            let counted =
                |store: Option<usize>, count_at: usize, first: usize, out: &mut Vec<usize>| {
                    let Some(count) = args.get(count_at) else {
                        return;
                    };
                    let n = i64::from(atoi(count.as_ref()));
                    if n < 1 || n > argc as i64 - first as i64 {
                        return;
                    }
                    out.extend(first..first + n as usize);
                    out.extend(store);
                };
            match name {
                "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "blmpop"
                | "bzmpop" => counted(None, 2, 3, out),
                "zunion" | "zinter" | "zdiff" | "zintercard" | "sintercard" | "lmpop" | "zmpop" => {
                    counted(None, 1, 2, out)
                }
                "zunionstore" | "zinterstore" | "zdiffstore" => counted(Some(1), 2, 3, out),
                "set" | "bitfield" | "sort_ro" => out.push(1),
                "sort" => {
                    out.push(1);
                    // The last STORE's argument, skipping the arguments of LIMIT, GET and BY.
                    let mut store = None;
                    let mut i = 2;
                    while i < argc {
                        if is(i, "limit") {
                            i += 2;
                        } else if is(i, "store") && i + 1 < argc {
                            store = Some(i + 1);
                        } else if is(i, "get") || is(i, "by") {
                            i += 1;
                        }
                        i += 1;
                    }
                    out.extend(store);
                }
                "migrate" => {
                    // One key at 3, or, with an empty key there, the keys after KEYS.
                    let (mut first, mut num) = (3, 1);
                    let mut i = 6;
                    while i < argc {
                        if is(i, "keys") {
                            if args[3].as_ref().is_empty() {
                                first = i + 1;
                                num = argc - first;
                            } else {
                                num = 0;
                            }
                            break;
                        }
                        if is(i, "auth") {
                            i += 1;
                        } else if is(i, "auth2") {
                            i += 2;
                        }
                        i += 1;
                    }
                    out.extend(first..first + num);
                }
                "georadius" | "georadiusbymember" => {
                    out.push(1);
                    // The last STORE or STOREDIST's argument.
                    let mut store = None;
                    let mut i = 5;
                    while i < argc {
                        if (is(i, "store") || is(i, "storedist")) && i + 1 < argc {
                            store = Some(i + 1);
                            i += 1;
                        }
                        i += 1;
                    }
                    out.extend(store);
                }
                "xread" | "xreadgroup" => {
                    // Options up to STREAMS, then as many keys as IDs.
                    let mut i = 1;
                    while i < argc {
                        if is(i, "block") || is(i, "count") {
                            i += 2;
                        } else if is(i, "group") {
                            i += 3;
                        } else if is(i, "noack") {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    if i < argc && is(i, "streams") {
                        let rest = argc - i - 1;
                        if rest > 0 && rest.is_multiple_of(2) {
                            out.extend(i + 1..i + 1 + rest / 2);
                        }
                    }
                }
                _ => {}
            }
            // Commands called with fewer arguments than their arity allows.
            out.retain(|&i| i < argc);
        }
    }
}

fn index() -> &'static HashMap<&'static str, &'static CommandSpec> {
    static INDEX: OnceLock<HashMap<&'static str, &'static CommandSpec>> = OnceLock::new();
    INDEX.get_or_init(|| generated::COMMANDS.iter().map(|c| (c.name, c)).collect())
}

/// Every command in the table.
pub fn all() -> &'static [CommandSpec] {
    generated::COMMANDS
}

/// Looks a command up by name, in any case, without allocating for names of usual length.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; 32];
    if name.len() > buf.len() {
        return None;
    }
    let lower = &mut buf[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    let lower = std::str::from_utf8(lower).ok()?;
    index().get(lower).copied()
}
