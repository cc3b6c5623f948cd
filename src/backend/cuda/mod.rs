//! The CUDA backend: cudarc launchers for the NVRTC-compiled kernels of `kernels/*.cu`
//! (embedded by `crate::kernels`). For now only the device probe.

pub mod probe;
