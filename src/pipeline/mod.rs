//! The InstaGen stages: the engine self-check, the kernel parity suite / benches, text to images (`sample`),
//! COCO evaluation (`eval`), the checks on what a run is given (`checks`), model-bench timing (`timing`) and
//! `instagen bench cpu` (`bench_cpu`: our CPU time next to PyTorch's), `instagen bench detect` (`bench_detect`:
//! Faster R-CNN images/s next to torchvision's).
//! `views`: the contact sheets, browser and card of a dataset folder; `embedded`: the default models
//! (`models/world/`) and their SHA-256 manifest.

pub mod bench_cpu;
pub mod bench_detect;
pub mod checks;
pub mod dataset;
pub mod detect;
pub mod embedded;
pub mod eval;
pub mod finetune;
pub mod generate;
pub mod ground;
pub mod kernels;
pub mod sdtrain;
pub mod selfcheck;
pub mod run;
pub mod sample;
pub mod timing;
pub mod views;
pub mod txt2img;
