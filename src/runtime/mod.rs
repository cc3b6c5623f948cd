//! Execution, above `graph` (what to compute, planned) and `backend` (where): the executor that runs a planned
//! graph on a backend's memory and keeps the optimiser state.

pub mod executor;

pub use executor::Executor;
