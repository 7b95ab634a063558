//! Small files in DATA_DIR that must survive a crash whole or not at all (the node name, the
//! cluster id): written to a temp file, fsync'd, renamed, and the directory fsync'd.

use std::io::Write;
use std::path::Path;

use crate::store::error::StoreError;

/// Reads `dir/name`, trimmed; `None` if the file does not exist.
pub fn read(dir: &Path, name: &str) -> Result<Option<String>, StoreError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Open { path, source }),
    }
}

/// Replaces `dir/name` with `contents`, durably: on disk when this returns.
pub fn write(dir: &Path, name: &str, contents: &str) -> Result<(), StoreError> {
    let path = dir.join(name);
    let io_err = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io_err)?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    // Must be fsync'd before the rename publishes it, and the dir fsync'd after.
    file.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, &path).map_err(io_err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err)
}

/// 32 hex digits from the process's random hasher keys, the clock and the pid (no rand crate:
/// std's `RandomState` is seeded from the OS's randomness).
pub fn random_hex(bits_64: usize) -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (0..bits_64)
        .map(|i| {
            let hash = std::collections::hash_map::RandomState::new().hash_one((
                nanos,
                std::process::id(),
                i,
            ));
            format!("{hash:016x}")
        })
        .collect()
}
