//! Launcher for `kernels/adamw.cu`.

use super::Launch;
use crate::backend::AdamWSlot;
use crate::error::{Error, Result};
use crate::optim::AdamWConfig;

pub fn launches(_slot: &AdamWSlot, _cfg: &AdamWConfig, _step: u32, _grad_scale: f32) -> Result<Vec<Launch>> {
    Err(Error::backend("kernels", "no CUDA AdamW kernel yet"))
}
