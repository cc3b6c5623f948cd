//! Parity cases: gemm kernels.

use super::Case;

pub fn cases() -> Vec<Case> {
    Vec::new()
}
