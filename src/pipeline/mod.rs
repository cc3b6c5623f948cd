//! The InstaGen stages: the engine self-check, the kernel parity suite / benches, text to images (`sample`),
//! COCO evaluation (`eval`), and the checks on what a run is given (`checks`).

pub mod checks;
pub mod eval;
pub mod finetune;
pub mod kernels;
pub mod selfcheck;
pub mod sample;
pub mod txt2img;
