//! Execution, above `graph` (what to compute, planned) and `backend` (where): the executor that runs a planned
//! graph on a backend's memory, the device parameters several executors share, and the trainer that keeps the
//! optimiser state (moments, master weights, EMA, loss scale) on them.

pub mod checkpoint;
pub mod executor;
pub mod params;
pub mod runlog;
pub mod schedule;
pub mod train_loop;
pub mod trainer;

pub use executor::Executor;
pub use params::{DeviceParams, ParamSlot};
pub use schedule::Schedule;
pub use trainer::{scaled_loss, StepStats, Trainer, TrainerState, LOSS_SCALE_INPUT};
