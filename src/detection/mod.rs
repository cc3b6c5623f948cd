//! Detection toolkit: COCO data and evaluation, box ops, matching.

pub mod hungarian;

// @coco
pub mod coco;
pub mod eval;

// @box
pub mod boxes;

// @roi
pub mod roi;

