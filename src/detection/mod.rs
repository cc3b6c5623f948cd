//! Detection toolkit: COCO data and evaluation, box ops, matching.

pub mod hungarian;

pub mod coco;
pub mod eval;

pub mod boxes;

pub mod roi;
