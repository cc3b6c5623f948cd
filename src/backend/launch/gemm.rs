//! Launchers for `kernels/gemm*.cu`.

use super::{Launch, NodeCtx};
use crate::error::Result;

pub fn launches(_ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    Ok(None)
}
