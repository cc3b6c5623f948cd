//! Execution, above `graph` (what to compute, planned) and `backend` (where): the executor that runs a planned
//! graph on a backend's memory and keeps the optimiser state.

pub mod checkpoint;
pub mod executor;
pub mod runlog;
pub mod train_loop;

pub use executor::Executor;
