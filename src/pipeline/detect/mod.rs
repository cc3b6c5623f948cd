//! `instagen detect`: Faster R-CNN training (InstaGen stage 5) with per-source loss rules, inference and
//! evaluation. `config.rs`: the run config and its rules; `data.rs`: the training samples.

pub mod config;
pub mod data;
pub mod infer;
pub mod train;
