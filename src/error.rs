//! The one error type of the crate. Every message names the file, key, op and shapes involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A graph node was built with inputs it cannot take (wrong rank, shape, dtype or attribute).
    #[error("op {op}: {msg}")]
    Graph { op: String, msg: String },

    /// A tensor or buffer given at run time does not match what the graph declared.
    #[error("{what}: {msg}")]
    Mismatch { what: String, msg: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A weight file is malformed, truncated, or lacks or mistypes a key.
    #[error("{path}: {msg}")]
    Weights { path: PathBuf, msg: String },

    /// A backend failed (driver error, missing library, unsupported op/dtype).
    #[error("backend {backend}: {msg}")]
    Backend { backend: String, msg: String },

    /// The memory plan is inconsistent with the graph (a bug, reported instead of undefined behaviour).
    #[error("memory plan: {0}")]
    Plan(String),

    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn graph(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Graph { op: op.into(), msg: msg.into() }
    }
    pub fn backend(backend: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Backend { backend: backend.into(), msg: msg.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
