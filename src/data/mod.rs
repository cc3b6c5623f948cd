//! Data loading for training: datasets, deterministic order and augmentation, batches.
//!
//! A [`Dataset`] maps an index to one sample; every random choice a sample makes (crop, flip, ...) comes from
//! the [`Rng`] it is handed, which [`sample_rng`] derives from (seed, epoch, index) alone, so a sample is the
//! same whichever worker thread makes it and whether or not the run was resumed.

pub mod collate;
pub mod loader;

pub use collate::{pad_rows, stack, Padded};
pub use loader::{permutation, Batch, Loader, LoaderConfig, Position};

use crate::error::Result;
use crate::util::Rng;

/// Samples by index. `get` must be a pure function of `(index, rng)` (no hidden state), so that loading is
/// deterministic and can run on worker threads.
pub trait Dataset: Send + Sync {
    type Item: Send + 'static;
    /// Number of samples in one epoch.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (< `len()`), with its random draws from `rng`.
    fn get(&self, index: usize, rng: &mut Rng) -> Result<Self::Item>;
}

/// The generator of sample `index` of `epoch` in a run seeded with `seed`.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> Rng {
    let mut r = Rng::new(seed);
    let a = r.next_u64() ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut r = Rng::new(a);
    Rng::new(r.next_u64() ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7))
}

pub mod crops;
pub mod image;
