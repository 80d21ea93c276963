//! A bounds-checked reader over bytes that came from outside (a RESTORE argument, an RDB
//! file), so that corrupt input turns into [`RdbError::Truncated`] rather than a panic.

use super::RdbError;

#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(input: &'a [u8]) -> Cursor<'a> {
        Cursor { input, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    pub fn is_at_end(&self) -> bool {
        self.remaining() == 0
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], RdbError> {
        let end = self.pos.checked_add(n).ok_or(RdbError::Truncated)?;
        let bytes = self.input.get(self.pos..end).ok_or(RdbError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| RdbError::Truncated)
    }

    pub fn u8(&mut self) -> Result<u8, RdbError> {
        let [b] = self.array()?;
        Ok(b)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        self.pos = self.input.len();
        rest
    }
}

/// A capacity for `count` elements that the remaining input can actually hold, each needing
/// at least `min_size` bytes: a length field is only a claim until the bytes are there.
pub fn bounded_capacity(count: usize, remaining: usize, min_size: usize) -> usize {
    count.min(remaining / min_size.max(1))
}
