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

    /// A graph needs more memory than the backend has; checked before anything is allocated. `what` names the
    /// graph and the flags or config fields that sized it (set by the caller with [`Error::building`]).
    #[error("{what}needs {needed} bytes ({detail}) but only {available} bytes are available")]
    Memory { what: String, needed: u128, available: usize, detail: String },

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
    /// Names what was being built (for example `UNet graph (--batch 4, --latent 64)`) in a [`Error::Memory`]
    /// error; other errors pass through.
    pub fn building(self, what: impl std::fmt::Display) -> Self {
        match self {
            Error::Memory { needed, available, detail, .. } => Error::Memory { what: format!("{what}: "), needed, available, detail },
            e => e,
        }
    }
}
