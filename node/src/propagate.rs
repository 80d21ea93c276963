//! What the keyspace's changes look like on the replication stream.
//!
//! Commands run under the keyspace lock, and each change they make is written here, as the
//! RESP command that makes the same change on a replica, in the order the changes happened.
//! When the lock is released the staged bytes move to the backlog (see `server::DbGuard`),
//! so the stream has exactly the keyspace's total order.
//!
//! Most writes are staged as sent. Those whose effect depends on the moment or on chance are
//! staged as their effect, as Valkey does: relative expiries become `PEXPIREAT`/`PXAT`,
//! SPOP becomes SREM, INCRBYFLOAT becomes SET, a served BLPOP becomes LPOP. Keys that expire
//! on a primary are staged as DEL: replicas never expire keys themselves.

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct Propagation {
    /// Off until the stream has a reader (a replica, the AOF): nothing is encoded for nobody.
    enabled: bool,
    staged: BytesMut,
    /// A new reader starts on a stream that must say which database it writes to.
    select_needed: bool,
    /// Changes a command staged itself (rather than leaving it to be staged as sent).
    explicit: u64,
}

impl Propagation {
    /// Turning it off keeps what is already staged: it still belongs to the stream.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// The next staged command is preceded by `SELECT 0` (a full sync just began, so the
    /// replica's stream starts here).
    pub fn select_next(&mut self) {
        self.select_needed = true;
    }

    pub fn staged(&self) -> &[u8] {
        &self.staged
    }

    pub fn clear_staged(&mut self) {
        self.staged.clear();
    }

    /// How many changes commands have staged explicitly so far.
    pub fn explicit_count(&self) -> u64 {
        self.explicit
    }

    /// Stages a command a handler rewrote (or a blocking pop it served).
    pub fn emit(&mut self, args: &[&[u8]]) {
        self.explicit += 1;
        if self.enabled {
            self.encode(args.len(), args.iter().copied());
        }
    }

    /// Like `emit`, with a head and a variable tail (SREM key m1 m2 ...).
    pub fn emit_with<'a>(
        &mut self,
        head: &[&'a [u8]],
        tail: impl ExactSizeIterator<Item = &'a [u8]>,
    ) {
        self.explicit += 1;
        if self.enabled {
            let n = head.len() + tail.len();
            self.encode(n, head.iter().copied().chain(tail));
        }
    }

    /// Stages a command exactly as the client sent it.
    pub fn verbatim(&mut self, args: &[Bytes]) {
        if self.enabled {
            self.encode(args.len(), args.iter().map(|a| &a[..]));
        }
    }

    /// A key expired on this primary.
    pub fn expired(&mut self, key: &[u8]) {
        if self.enabled {
            self.encode(2, [&b"DEL"[..], key].into_iter());
        }
    }

    /// Where a transaction's changes begin; see `wrap_multi`.
    pub fn mark(&mut self) -> usize {
        self.ensure_select();
        self.staged.len()
    }

    /// Wraps everything staged since `mark` in MULTI/EXEC, so a replica applies a
    /// transaction as one step too. Nothing staged, nothing wrapped.
    pub fn wrap_multi(&mut self, mark: usize) {
        if !self.enabled || self.staged.len() <= mark {
            return;
        }
        let tail = self.staged.split_off(mark);
        self.staged.put_slice(b"*1\r\n$5\r\nMULTI\r\n");
        self.staged.unsplit(tail);
        self.staged.put_slice(b"*1\r\n$4\r\nEXEC\r\n");
    }

    /// Appends bytes already in stream form (PING, REPLCONF GETACK).
    pub fn raw(&mut self, bytes: &[u8]) {
        if self.enabled {
            self.ensure_select();
            self.staged.put_slice(bytes);
        }
    }

    fn ensure_select(&mut self) {
        if self.select_needed && self.enabled {
            self.select_needed = false;
            self.staged.put_slice(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n");
        }
    }

    fn encode<'a>(&mut self, n: usize, args: impl Iterator<Item = &'a [u8]>) {
        self.ensure_select();
        let out = &mut self.staged;
        out.put_u8(b'*');
        out.put_slice(itoa::Buffer::new().format(n).as_bytes());
        out.put_slice(b"\r\n");
        for a in args {
            out.put_u8(b'$');
            out.put_slice(itoa::Buffer::new().format(a.len()).as_bytes());
            out.put_slice(b"\r\n");
            out.put_slice(a);
            out.put_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_encoded_while_disabled() {
        let mut p = Propagation::default();
        p.emit(&[b"SET", b"k", b"v"]);
        assert!(p.staged().is_empty());
        assert_eq!(p.explicit_count(), 1);
    }

    #[test]
    fn commands_are_multibulk_and_select_leads_a_new_stream() {
        let mut p = Propagation::default();
        p.set_enabled(true);
        p.select_next();
        p.verbatim(&[
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"k"),
            Bytes::from_static(b"v"),
        ]);
        p.expired(b"old");
        assert_eq!(
            p.staged(),
            &b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nDEL\r\n$3\r\nold\r\n"[..]
        );
    }

    #[test]
    fn transactions_are_wrapped_only_when_they_changed_something() {
        let mut p = Propagation::default();
        p.set_enabled(true);
        let m = p.mark();
        p.wrap_multi(m);
        assert!(p.staged().is_empty());
        let m = p.mark();
        p.emit(&[b"INCR", b"n"]);
        p.wrap_multi(m);
        assert_eq!(
            p.staged(),
            &b"*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*1\r\n$4\r\nEXEC\r\n"[..]
        );
    }
}
