//! The InstaGen stages. For now: the engine self-check, and the kernel parity suite / benches.

pub mod kernels;
pub mod selfcheck;
pub mod sample;
pub mod txt2img;
