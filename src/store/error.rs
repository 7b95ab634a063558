//! Errors of the storage layer that an operator must see at startup: which file, what is wrong.
//! Runtime storage failures travel as `std::io::Error` because openraft's storage traits use it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("corrupt data in {path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// Written by another version of raftkv that this build cannot read (no data was changed).
    #[error("cannot use {path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}
