//! Detection toolkit: COCO data and evaluation, box ops, matching.

pub mod hungarian;

// @coco

// @box

// @roi
pub mod roi;

