//! Detection toolkit: COCO data and evaluation, box ops, matching.

pub mod hungarian;

pub mod coco;
pub mod eval;

/// The host box algorithms live in `crate::boxes` (the CPU backend uses them too); re-exported here.
pub use crate::boxes;

pub mod roi;
