//! Parity cases: movement kernels (cast, copies).

use super::Case;

pub fn cases() -> Vec<Case> {
    Vec::new()
}
