//! Detection toolkit: COCO data and evaluation, box ops, matching.

pub mod hungarian;

// @coco

// @box
pub mod boxes;

// @roi
pub mod roi;

