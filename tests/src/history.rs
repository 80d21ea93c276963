//! Recording what concurrent clients did to lists, and checking it: the list-append model.
//!
//! Clients append unique elements to lists (`RPUSH key element`) and read whole lists
//! (`LRANGE key 0 -1`) while faults happen. Each operation is recorded with the time it was
//! invoked, the time it completed, and its outcome:
//!
//! - [`Outcome::Ok`]: the server acknowledged it (for appends, by whatever standard the test
//!   sets: a plain reply, or a reply followed by `WAIT` reaching a replica).
//! - [`Outcome::Failed`]: the server answered with an error (`-MOVED`, `-CLUSTERDOWN`, ...), or
//!   the connection could not even be opened: the operation certainly did not take effect.
//! - [`Outcome::Unknown`]: it was sent and no (sufficient) answer came: a timeout, a
//!   connection reset, or an acknowledgement that did not meet the test's standard. It may or
//!   may not have taken effect, and if it did, possibly long after it "completed" (a request
//!   can sit in a socket buffer or a paused server), so its completion time is taken to be
//!   infinitely late.
//!
//! Only successful reads are recorded (a failed read says nothing). After the faults the test
//! reads every key once more, with the writers stopped and the cluster healed: the *final*
//! read, the authoritative state.
//!
//! # What [`History::check`] verifies, per key
//!
//! Elements are unique (each appended by one operation) and lists only grow, so a correct
//! (linearizable) list has a single order of appends, the final list `F`, and every read
//! returns a prefix of `F`. The check is sound: a linearizable history never fails it.
//!
//! - **Duplicated**: an element occurs twice in one read.
//! - **Phantom**: a read contains an element that no operation appended to this key, or that
//!   only a failed operation did.
//! - **Lost**: an acknowledged append whose element is not in `F`.
//! - **Misordered** (the reads are not explained by one order of appends):
//!   - a read is not `P ++ V` where `P` is a prefix of `F` and no element of `V` is in `F`
//!     (a hole, or a reordering). Elements of `V` are ones that were seen and later vanished:
//!     with acknowledged appends that is a loss (reported as such), with unknown ones it is
//!     what asynchronous replication allows (a primary applied it, crashed before its replica
//!     got it): counted in [`Report::unknown_vanished`], not a failure;
//!   - an element in `F` follows one whose append was invoked only after its own completed
//!     (real-time order of appends);
//!   - `RPUSH` replied the list length `n` but the element is not at index `n - 1` of `F`;
//!   - a read contains an element whose append was invoked after the read completed.
//! - **Stale**: a read misses a surviving element whose acknowledged append completed before
//!   the read was invoked, or returns a shorter surviving prefix than a read that completed
//!   before it was invoked (reads must not go back in time).
//!
//! Keys that were appended to but have no final read cannot be checked for losses; they are
//! listed in [`Report::unchecked_keys`] (and make the report invalid).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

/// Nanoseconds since a [`Clock`]'s origin.
pub type Nanos = u64;

/// The time base every client of one history shares.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Certainly not applied (an error reply, or no connection); why.
    Failed(String),
    /// Maybe applied, maybe later; why it is not known.
    Unknown(String),
}

/// One `RPUSH key element`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// Which client (for messages).
    pub process: usize,
    pub key: String,
    pub element: String,
    pub invoked: Nanos,
    pub completed: Nanos,
    pub outcome: Outcome,
    /// The list length `RPUSH` replied, if it replied (with an unknown outcome too, e.g. when
    /// a following `WAIT` fell short).
    pub length: Option<u64>,
}

impl Append {
    /// The completion time for real-time ordering: unknown outcomes may take effect at any
    /// later time.
    fn effective_completion(&self) -> Nanos {
        match self.outcome {
            Outcome::Ok => self.completed,
            _ => Nanos::MAX,
        }
    }
}

/// One successful `LRANGE key 0 -1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub process: usize,
    pub key: String,
    pub invoked: Nanos,
    pub completed: Nanos,
    pub list: Vec<String>,
    /// The read after the faults, with the writers stopped: the authoritative final state.
    pub is_final: bool,
}

/// Everything the clients did. Each client may keep its own and [`History::merge`] them.
#[derive(Debug, Clone, Default)]
pub struct History {
    appends: Vec<Append>,
    reads: Vec<Read>,
}

/// One problem found, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key: String,
    /// The element concerned, if one is.
    pub element: Option<String>,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.element {
            Some(e) => write!(f, "{} / {e}: {}", self.key, self.detail),
            None => write!(f, "{}: {}", self.key, self.detail),
        }
    }
}

/// What [`History::check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Keys with at least one operation.
    pub keys: usize,
    pub appends_ok: usize,
    pub appends_failed: usize,
    pub appends_unknown: usize,
    /// Successful reads, final ones included.
    pub reads: usize,
    /// Acknowledged appends missing from the final read.
    pub lost: Vec<Finding>,
    /// Elements that occur more than once in a read (one finding per key and element).
    pub duplicated: Vec<Finding>,
    /// Elements read that were never appended to the key, or only by failed operations.
    pub phantom: Vec<Finding>,
    /// Reads (or the final order) not explained by one order of appends consistent with
    /// real time.
    pub misordered: Vec<Finding>,
    /// Reads that miss what had surely happened before they began.
    pub stale: Vec<Finding>,
    /// Unknown appends present in the final read.
    pub unknown_survived: usize,
    /// Unknown appends that some read saw but the final read does not have: allowed by
    /// asynchronous replication, not linearizable.
    pub unknown_vanished: usize,
    /// Keys appended to that have no final read.
    pub unchecked_keys: Vec<String>,
}

impl Report {
    /// No loss, duplicate, phantom, misordered or stale read, and every key checked.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.phantom.is_empty()
            && self.misordered.is_empty()
            && self.stale.is_empty()
            && self.unchecked_keys.is_empty()
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        format!(
            "{} keys, appends ok/unknown/failed {}/{}/{}, {} reads; lost {}, duplicated {}, \
             phantom {}, misordered {}, stale {}; unknown appends survived {}, seen then \
             vanished {}; unchecked keys {}",
            self.keys,
            self.appends_ok,
            self.appends_unknown,
            self.appends_failed,
            self.reads,
            self.lost.len(),
            self.duplicated.len(),
            self.phantom.len(),
            self.misordered.len(),
            self.stale.len(),
            self.unknown_survived,
            self.unknown_vanished,
            self.unchecked_keys.len()
        )
    }
}

impl fmt::Display for Report {
    /// The summary, then up to 20 findings of each kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        let kinds: [(&str, &Vec<Finding>); 5] = [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("phantom", &self.phantom),
            ("misordered", &self.misordered),
            ("stale", &self.stale),
        ];
        for (name, findings) in kinds {
            for finding in findings.iter().take(20) {
                writeln!(f, "  {name}: {finding}")?;
            }
            if findings.len() > 20 {
                writeln!(f, "  {name}: ... and {} more", findings.len() - 20)?;
            }
        }
        if !self.unchecked_keys.is_empty() {
            writeln!(f, "  no final read of: {:?}", self.unchecked_keys)?;
        }
        Ok(())
    }
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Records an append.
    pub fn append(&mut self, op: Append) {
        self.appends.push(op);
    }

    /// Records a successful read.
    pub fn read(&mut self, op: Read) {
        self.reads.push(op);
    }

    /// Takes in another client's operations.
    pub fn merge(&mut self, other: History) {
        self.appends.extend(other.appends);
        self.reads.extend(other.reads);
    }

    pub fn appends(&self) -> &[Append] {
        &self.appends
    }

    pub fn reads(&self) -> &[Read] {
        &self.reads
    }

    /// Checks every key (see the module documentation). Panics if two appends carry the
    /// same element: that is a bug of the workload, not of the server.
    pub fn check(&self) -> Report {
        let mut by_key: BTreeMap<&str, (Vec<&Append>, Vec<&Read>)> = BTreeMap::new();
        for a in &self.appends {
            by_key.entry(&a.key).or_default().0.push(a);
        }
        for r in &self.reads {
            by_key.entry(&r.key).or_default().1.push(r);
        }
        let mut seen = HashMap::new();
        for a in &self.appends {
            if let Some(first) = seen.insert(a.element.as_str(), a) {
                panic!("element appended twice: {first:?} and {a:?}");
            }
        }
        let mut report = Report {
            keys: by_key.len(),
            reads: self.reads.len(),
            ..Report::default()
        };
        for a in &self.appends {
            match a.outcome {
                Outcome::Ok => report.appends_ok += 1,
                Outcome::Failed(_) => report.appends_failed += 1,
                Outcome::Unknown(_) => report.appends_unknown += 1,
            }
        }
        for (key, (appends, reads)) in by_key {
            check_key(key, &appends, &reads, &mut report);
        }
        report
    }
}

/// The checks of one key; findings go to `report`.
fn check_key(key: &str, appends: &[&Append], reads: &[&Read], report: &mut Report) {
    let finding = |element: Option<&str>, detail: String| Finding {
        key: key.to_string(),
        element: element.map(str::to_string),
        detail,
    };
    let by_element: HashMap<&str, &Append> =
        appends.iter().map(|a| (a.element.as_str(), *a)).collect();

    // Duplicates and phantoms, in every read (final ones too); one finding per element.
    let mut duplicated: BTreeMap<&str, usize> = BTreeMap::new();
    let mut phantom: BTreeMap<&str, String> = BTreeMap::new();
    for r in reads {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for e in &r.list {
            *counts.entry(e.as_str()).or_default() += 1;
            match by_element.get(e.as_str()).map(|a| &a.outcome) {
                None => {
                    phantom
                        .entry(e)
                        .or_insert_with(|| "never appended to this key".to_string());
                }
                Some(Outcome::Failed(why)) => {
                    phantom
                        .entry(e)
                        .or_insert_with(|| format!("its append failed ({why})"));
                }
                Some(_) => {}
            }
        }
        for (e, n) in counts {
            if n > 1 {
                *duplicated.entry(e).or_default() += 1;
            }
        }
    }
    for (e, reads_with_it) in duplicated {
        report.duplicated.push(finding(
            Some(e),
            format!("occurs more than once in {reads_with_it} read(s)"),
        ));
    }
    for (e, why) in phantom {
        report
            .phantom
            .push(finding(Some(e), format!("read but {why}")));
    }

    // The final order F. Several final reads must agree; the last one to complete counts.
    let finals: Vec<&&Read> = reads.iter().filter(|r| r.is_final).collect();
    let Some(last_final) = finals.iter().max_by_key(|r| r.completed) else {
        if !appends.is_empty() {
            report.unchecked_keys.push(key.to_string());
        }
        return;
    };
    let final_list = &last_final.list;
    for other in &finals {
        if other.list != *final_list {
            report.misordered.push(finding(
                None,
                format!(
                    "final reads differ: {:?} vs {:?}",
                    other.list, last_final.list
                ),
            ));
        }
    }
    // Index of each element in F (its first occurrence; duplicates are reported above).
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, e) in final_list.iter().enumerate() {
        index.entry(e.as_str()).or_insert(i);
    }

    // Losses, and what became of unknown appends.
    let mut observed: HashMap<&str, usize> = HashMap::new();
    for r in reads.iter().filter(|r| !r.is_final) {
        for e in &r.list {
            *observed.entry(e.as_str()).or_default() += 1;
        }
    }
    for a in appends {
        let present = index.contains_key(a.element.as_str());
        match a.outcome {
            Outcome::Ok if !present => {
                let seen = observed.get(a.element.as_str()).copied().unwrap_or(0);
                report.lost.push(finding(
                    Some(&a.element),
                    format!(
                        "acknowledged append (client {}, {}..{} ns) missing from the final \
                         read; {seen} earlier read(s) had it",
                        a.process, a.invoked, a.completed
                    ),
                ));
            }
            Outcome::Unknown(_) if present => report.unknown_survived += 1,
            Outcome::Unknown(_) if observed.contains_key(a.element.as_str()) => {
                report.unknown_vanished += 1
            }
            _ => {}
        }
        // RPUSH's reply is the length right after the element went in; lists only grow and
        // are only ever cut back to a prefix, so a surviving element keeps that index.
        if let (Some(length), Some(&i)) = (a.length, index.get(a.element.as_str())) {
            if length != i as u64 + 1 {
                report.misordered.push(finding(
                    Some(&a.element),
                    format!(
                        "RPUSH replied length {length}, but the element is at index {i} of \
                         the final list"
                    ),
                ));
            }
        }
    }

    // Real-time order of the appends in F: if a completed (acknowledged) before b was
    // invoked, a comes first. Walk F from the end, keeping the earliest completion seen
    // after the current position.
    let mut earliest_after: Option<&Append> = None;
    for e in final_list.iter().rev() {
        let Some(a) = by_element.get(e.as_str()) else {
            continue; // a phantom, reported above
        };
        if let Some(later) = earliest_after {
            if later.effective_completion() < a.invoked {
                report.misordered.push(finding(
                    Some(e),
                    format!(
                        "precedes {} in the final list, whose append was acknowledged at {} ns, \
                         before this one was invoked at {} ns",
                        later.element, later.completed, a.invoked
                    ),
                ));
            }
        }
        if earliest_after.is_none_or(|l| a.effective_completion() < l.effective_completion()) {
            earliest_after = Some(a);
        }
    }

    // Every other read: its surviving part must be a prefix of F, followed only by vanished
    // elements; nothing from the future.
    let mut prefix_len: Vec<(Nanos, Nanos, usize)> = Vec::new(); // (invoked, completed, |P|)
    for r in reads.iter().filter(|r| !r.is_final) {
        let p = r
            .list
            .iter()
            .take_while(|e| index.contains_key(e.as_str()))
            .count();
        if r.list[..p] != final_list[..p.min(final_list.len())] {
            report.misordered.push(finding(
                None,
                format!(
                    "read by client {} at {}..{} ns is not a prefix of the final list: {:?} vs \
                     final {:?}",
                    r.process, r.invoked, r.completed, r.list, final_list
                ),
            ));
        } else if let Some(e) = r.list[p..].iter().find(|e| index.contains_key(e.as_str())) {
            report.misordered.push(finding(
                Some(e),
                format!(
                    "read by client {} at {}..{} ns has it after {}, which is not in the final \
                     list: {:?}",
                    r.process, r.invoked, r.completed, r.list[p], r.list
                ),
            ));
        }
        for e in &r.list {
            if let Some(a) = by_element.get(e.as_str()) {
                if a.invoked > r.completed {
                    report.misordered.push(finding(
                        Some(e),
                        format!(
                            "read by client {} completed at {} ns, before its append was \
                             invoked at {} ns",
                            r.process, r.completed, a.invoked
                        ),
                    ));
                }
            }
        }
        prefix_len.push((r.invoked, r.completed, p));
    }

    // Stale reads. `needed` lists (completion time, surviving prefix a read begun later must
    // have): acknowledged appends in F, and earlier reads' surviving prefixes.
    let mut needed: Vec<(Nanos, usize, String)> = appends
        .iter()
        .filter(|a| a.outcome == Outcome::Ok)
        .filter_map(|a| {
            index.get(a.element.as_str()).map(|&i| {
                (
                    a.completed,
                    i + 1,
                    format!("acknowledged append of {} at {} ns", a.element, a.completed),
                )
            })
        })
        .collect();
    needed.extend(
        prefix_len
            .iter()
            .filter(|&&(_, _, p)| p > 0)
            .map(|&(inv, comp, p)| {
                (
                    comp,
                    p,
                    format!("a read at {inv}..{comp} ns that had {p} surviving elements"),
                )
            }),
    );
    needed.sort_by_key(|n| n.0);
    // running[i]: the entry with the largest prefix among needed[..=i].
    let mut running: Vec<usize> = Vec::with_capacity(needed.len());
    for (i, n) in needed.iter().enumerate() {
        let best = match running.last() {
            Some(&b) if needed[b].1 >= n.1 => b,
            _ => i,
        };
        running.push(best);
    }
    for r in reads.iter().filter(|r| !r.is_final) {
        let p = r
            .list
            .iter()
            .take_while(|e| index.contains_key(e.as_str()))
            .count();
        // Entries that completed strictly before this read was invoked.
        let before = needed.partition_point(|n| n.0 < r.invoked);
        if before == 0 {
            continue;
        }
        let (_, need, why) = &needed[running[before - 1]];
        if p < *need {
            report.stale.push(finding(
                final_list.get(p).map(String::as_str),
                format!(
                    "read by client {} at {}..{} ns has {p} surviving elements, but {why} \
                     requires {need}: {:?}",
                    r.process, r.invoked, r.completed, r.list
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(process: usize, element: &str, invoked: Nanos, completed: Nanos) -> Append {
        Append {
            process,
            key: "k".into(),
            element: element.into(),
            invoked,
            completed,
            outcome: Outcome::Ok,
            length: None,
        }
    }

    fn read(process: usize, invoked: Nanos, completed: Nanos, list: &[&str]) -> Read {
        Read {
            process,
            key: "k".into(),
            invoked,
            completed,
            list: list.iter().map(|s| s.to_string()).collect(),
            is_final: false,
        }
    }

    fn final_read(list: &[&str]) -> Read {
        Read {
            is_final: true,
            ..read(9, 1_000_000, 1_000_001, list)
        }
    }

    /// Two clients appending concurrently, a third reading; an unknown append that took
    /// effect, one that did not, and a failed one.
    fn valid_history() -> History {
        let mut h = History::new();
        // a and b overlap: either order is fine; F has b first.
        h.append(append(1, "a", 10, 50));
        h.append(append(2, "b", 20, 40));
        h.append(Append {
            length: Some(3),
            ..append(1, "c", 60, 70)
        });
        h.append(Append {
            outcome: Outcome::Unknown("timeout".into()),
            ..append(2, "d", 80, 90)
        });
        h.append(Append {
            outcome: Outcome::Unknown("timeout".into()),
            ..append(2, "never", 100, 110)
        });
        h.append(Append {
            outcome: Outcome::Failed("CLUSTERDOWN".into()),
            ..append(1, "refused", 100, 110)
        });
        h.append(append(1, "e", 120, 130));
        // Concurrent with the appends of a and b: may see none, one or both.
        h.read(read(3, 5, 15, &[]));
        h.read(read(3, 25, 45, &["b"]));
        h.read(read(3, 30, 55, &["b", "a"]));
        h.read(read(3, 75, 85, &["b", "a", "c"]));
        // The unknown append shows up late: after its "completion".
        h.read(read(3, 95, 99, &["b", "a", "c"]));
        h.read(read(3, 111, 119, &["b", "a", "c", "d"]));
        h.read(read(3, 140, 150, &["b", "a", "c", "d", "e"]));
        h.read(final_read(&["b", "a", "c", "d", "e"]));
        h
    }

    #[test]
    fn a_valid_concurrent_history_passes() {
        let report = valid_history().check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.appends_ok, 4);
        assert_eq!(report.appends_unknown, 2);
        assert_eq!(report.appends_failed, 1);
        assert_eq!(report.unknown_survived, 1);
        assert_eq!(report.unknown_vanished, 0);
    }

    #[test]
    fn an_acknowledged_element_dropped_from_the_final_read_is_lost() {
        let mut h = valid_history();
        h.reads.retain(|r| !r.is_final);
        h.read(final_read(&["b", "a", "d", "e"]));
        let report = h.check();
        assert!(!report.is_valid());
        assert_eq!(report.lost.len(), 1, "{report}");
        assert_eq!(report.lost[0].element.as_deref(), Some("c"));
        assert!(report.lost[0].detail.contains("4 earlier read(s) had it"));
    }

    #[test]
    fn an_acknowledged_element_dropped_from_a_read_is_flagged() {
        // From the end of a read that began after its append completed: stale.
        let mut h = valid_history();
        h.reads[5] = read(3, 111, 119, &["b", "a"]); // misses c (acked at 70) and d
        let report = h.check();
        assert_eq!(report.stale.len(), 1, "{report}");
        assert_eq!(report.stale[0].element.as_deref(), Some("c"));
        assert!(report.lost.is_empty() && report.misordered.is_empty());
        // From the middle: a hole.
        let mut h = valid_history();
        h.reads[6] = read(3, 140, 150, &["b", "c", "d", "e"]);
        let report = h.check();
        assert!(!report.misordered.is_empty(), "{report}");
        // From a read concurrent with the append: fine.
        let mut h = valid_history();
        h.reads[3] = read(3, 65, 85, &["b", "a"]);
        assert!(h.check().is_valid());
    }

    #[test]
    fn duplicates_are_flagged() {
        let mut h = valid_history();
        h.reads[6] = read(3, 140, 150, &["b", "a", "c", "d", "e", "e"]);
        let report = h.check();
        assert_eq!(report.duplicated.len(), 1, "{report}");
        assert_eq!(report.duplicated[0].element.as_deref(), Some("e"));
        let mut h = valid_history();
        h.reads.retain(|r| !r.is_final);
        h.read(final_read(&["b", "a", "a", "c", "d", "e"]));
        let report = h.check();
        assert_eq!(report.duplicated.len(), 1, "{report}");
        assert!(!report.is_valid());
    }

    #[test]
    fn phantoms_are_flagged() {
        let mut h = valid_history();
        h.reads[6] = read(3, 140, 150, &["b", "a", "c", "d", "e", "ghost"]);
        let report = h.check();
        assert_eq!(report.phantom.len(), 1, "{report}");
        assert_eq!(report.phantom[0].element.as_deref(), Some("ghost"));
        // An element whose append failed is a phantom too.
        let mut h = valid_history();
        h.reads.retain(|r| !r.is_final);
        h.read(final_read(&["b", "a", "c", "d", "e", "refused"]));
        let report = h.check();
        assert_eq!(report.phantom.len(), 1, "{report}");
        assert!(report.phantom[0].detail.contains("failed"));
        // So is one appended to another key.
        let mut h = valid_history();
        h.append(Append {
            key: "other".into(),
            ..append(4, "elsewhere", 1, 2)
        });
        h.read(Read {
            key: "other".into(),
            ..final_read(&["elsewhere"])
        });
        h.reads[6] = read(3, 140, 150, &["b", "a", "c", "d", "e", "elsewhere"]);
        assert_eq!(h.check().phantom.len(), 1);
    }

    #[test]
    fn reordering_and_positions_are_flagged() {
        // A read that disagrees with the final order.
        let mut h = valid_history();
        h.reads[4] = read(3, 95, 99, &["a", "b", "c"]);
        assert!(!h.check().misordered.is_empty());
        // The final order contradicts real time: e was invoked after c completed.
        let mut h = valid_history();
        h.reads.truncate(0);
        h.read(final_read(&["b", "a", "e", "c", "d"]));
        let report = h.check();
        assert!(
            report
                .misordered
                .iter()
                .any(|f| f.detail.contains("precedes")),
            "{report}"
        );
        // RPUSH said c went in third; the final list has it second.
        let mut h = valid_history();
        h.appends.retain(|a| a.element != "a");
        h.reads.truncate(0);
        h.read(final_read(&["b", "c", "d", "e"]));
        let report = h.check();
        assert!(
            report
                .misordered
                .iter()
                .any(|f| f.detail.contains("length 3")),
            "{report}"
        );
        // A read that sees an element before anyone appended it.
        let mut h = valid_history();
        h.reads[0] = read(3, 5, 15, &["b", "a", "c"]);
        assert!(!h.check().misordered.is_empty());
    }

    #[test]
    fn reads_going_back_in_time_are_stale() {
        let mut h = valid_history();
        // d (unknown) was seen at 111..119; a read begun later must see it too.
        h.read(read(4, 120, 125, &["b", "a", "c"]));
        let report = h.check();
        assert_eq!(report.stale.len(), 1, "{report}");
        assert_eq!(report.stale[0].element.as_deref(), Some("d"));
    }

    #[test]
    fn unknown_appends_may_vanish_but_acknowledged_ones_may_not() {
        let mut h = valid_history();
        // d was seen, then a failover dropped it; e was appended afterwards.
        h.reads.truncate(6);
        h.read(read(3, 140, 150, &["b", "a", "c", "e"]));
        h.read(final_read(&["b", "a", "c", "e"]));
        h.appends.iter_mut().for_each(|a| {
            if a.element == "e" {
                a.length = Some(4);
            }
        });
        let report = h.check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.unknown_vanished, 1);
        // The same with d acknowledged is a loss.
        h.appends.iter_mut().for_each(|a| {
            if a.element == "d" {
                a.outcome = Outcome::Ok;
            }
        });
        let report = h.check();
        assert_eq!(report.lost.len(), 1, "{report}");
    }

    #[test]
    fn a_key_without_a_final_read_is_unchecked() {
        let mut h = valid_history();
        h.reads.retain(|r| !r.is_final);
        let report = h.check();
        assert_eq!(report.unchecked_keys, vec!["k".to_string()]);
        assert!(!report.is_valid());
    }

    /// A tiny deterministic generator (xorshift), so the randomized tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A random linearizable history: each operation takes effect atomically at a random
    /// instant within its interval; some appends end unknown (and then maybe never apply).
    fn random_history(seed: u64) -> History {
        let mut rng = Rng(seed | 1);
        // (effect time, invoked, completed, op); ops are appends (Some(elem)) or reads.
        let mut ops = Vec::new();
        for n in 0..200u64 {
            let invoked = rng.below(10_000);
            let completed = invoked + 1 + rng.below(300);
            let effect = invoked + rng.below(completed - invoked + 1);
            let process = rng.below(5) as usize;
            ops.push((
                effect,
                invoked,
                completed,
                process,
                (rng.below(2) == 0).then_some(n),
            ));
        }
        ops.sort();
        let mut list: Vec<String> = Vec::new();
        let mut h = History::new();
        for (_, invoked, completed, process, op) in ops {
            match op {
                Some(n) => {
                    let element = format!("e{n}");
                    let outcome = match rng.below(10) {
                        0 => Outcome::Unknown("timeout".into()),
                        1 => Outcome::Failed("CLUSTERDOWN".into()),
                        _ => Outcome::Ok,
                    };
                    // An unknown append applies half the time; a failed one never.
                    let applies = match outcome {
                        Outcome::Ok => true,
                        Outcome::Unknown(_) => rng.below(2) == 0,
                        Outcome::Failed(_) => false,
                    };
                    let length = if applies {
                        list.push(element.clone());
                        (outcome == Outcome::Ok).then_some(list.len() as u64)
                    } else {
                        None
                    };
                    h.append(Append {
                        process,
                        key: "k".into(),
                        element,
                        invoked,
                        completed,
                        outcome,
                        length,
                    });
                }
                None => h.read(Read {
                    process,
                    key: "k".into(),
                    invoked,
                    completed,
                    list: list.clone(),
                    is_final: false,
                }),
            }
        }
        h.read(Read {
            process: 9,
            key: "k".into(),
            invoked: 20_000,
            completed: 20_001,
            list,
            is_final: true,
        });
        h
    }

    #[test]
    fn random_linearizable_histories_pass_and_injected_faults_are_caught() {
        for seed in 1..=50u64 {
            let h = random_history(seed * 7919);
            let report = h.check();
            assert!(report.is_valid(), "seed {seed}: {report}");

            // Drop a random acknowledged element from the final read: a loss.
            let mut lossy = h.clone();
            let last = lossy.reads.len() - 1;
            let acked: Vec<String> = lossy
                .appends
                .iter()
                .filter(|a| a.outcome == Outcome::Ok)
                .map(|a| a.element.clone())
                .collect();
            let mut rng = Rng(seed);
            let victim = &acked[rng.below(acked.len() as u64) as usize];
            lossy.reads[last].list.retain(|e| e != victim);
            let report = lossy.check();
            assert!(
                report
                    .lost
                    .iter()
                    .any(|f| f.element.as_ref() == Some(victim)),
                "seed {seed}: dropping {victim} went unnoticed: {report}"
            );

            // Repeat an element in a random non-empty read: a duplicate.
            let mut doubled = h.clone();
            let nonempty: Vec<usize> = (0..doubled.reads.len())
                .filter(|&i| !doubled.reads[i].list.is_empty())
                .collect();
            let i = nonempty[rng.below(nonempty.len() as u64) as usize];
            let e = doubled.reads[i].list[0].clone();
            doubled.reads[i].list.push(e);
            assert!(!doubled.check().duplicated.is_empty(), "seed {seed}");

            // Add a never-appended element: a phantom.
            let mut haunted = h.clone();
            haunted.reads[i].list.push("boo".into());
            assert!(!haunted.check().phantom.is_empty(), "seed {seed}");
        }
    }
}
