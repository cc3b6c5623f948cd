//! instagen: an engine that turns Stable Diffusion into an object-detection dataset factory.
//!
//! Layers (each uses only the ones below it): `bin/instagen` (CLI) -> `pipeline` -> `runtime` (executor,
//! optimiser state; runs a planned graph on a backend) and `models` -> `nn` -> `graph` (builder, autodiff,
//! planner) -> `backend` (cpu, cuda, emu) -> `kernels/*.cu`. The ops
//! themselves live in `ops`, one folder per family (shape and backward rules, CPU code, launcher, cases), which
//! `graph` and the backends dispatch into; `boxes` (host box algorithms) depends only on `error`.
//! See `docs/DESIGN.md`.

pub mod backend;
pub mod boxes;
pub mod data;
pub mod detection;
pub mod error;
pub mod graph;
pub mod info;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod optim;
pub mod ops;
pub mod parity;
pub mod params;
pub mod pipeline;
pub mod runtime;
pub mod tensor;
pub mod util;
pub mod world;

pub use error::{Error, Result};
pub use graph::{Graph, NodeId};
pub use tensor::{DType, HostTensor};
