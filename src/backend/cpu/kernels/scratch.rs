//! Reusable f32 scratch buffers for decoded f16/bf16 operands and results.
//!
//! Freshly allocated large buffers cost a page fault per 4 KiB on first touch (and the allocator returns them
//! to the system when freed), which for f16/bf16 ops costs more than the op itself. A small global pool keeps
//! a few buffers alive between ops instead.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept at most, and the largest one kept (in elements).
const POOL_BUFFERS: usize = 8;
const POOL_MAX_ELEMS: usize = 1 << 22;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// An f32 buffer of a requested length whose contents are unspecified (but initialised): callers overwrite it.
pub(crate) struct Buf(Vec<f32>);

impl Buf {
    pub(crate) fn new(n: usize) -> Buf {
        let pooled = {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= n)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i))
        };
        let mut v = pooled.unwrap_or_default();
        // Within capacity: only the part beyond the old length is written.
        v.resize(n, 0.0);
        Buf(v)
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.0.capacity() == 0 || self.0.capacity() > POOL_MAX_ELEMS {
            return;
        }
        let v = std::mem::take(&mut self.0);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_BUFFERS {
            pool.push(v);
        } else if let Some(smallest) = pool.iter_mut().min_by_key(|b| b.capacity()) {
            // Keep the larger buffers: they are the expensive ones to fault in again.
            if smallest.capacity() < v.capacity() {
                *smallest = v;
            }
        }
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

/// A float tensor's values as f32: borrowed from aligned f32 storage, or decoded into a scratch buffer.
pub(crate) enum Floats<'a> {
    Borrowed(&'a [f32]),
    Decoded(Buf),
}

impl Deref for Floats<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Floats::Borrowed(s) => s,
            Floats::Decoded(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_have_the_requested_length() {
        for n in [0, 5, 100_000, 3, 100_000, 7] {
            let mut b = Buf::new(n);
            assert_eq!(b.len(), n);
            b.fill(1.0);
        }
    }
}
