//! A snapshot file that syncs itself in pieces while it is written.

use std::fs::File;
use std::io;
use std::io::Write;

/// Bytes a snapshot file may hold written but not yet synced: every this many, the writer
/// fdatasyncs it. Must bound what the kernel holds dirty: on ext4 (data=ordered) the log's own
/// fdatasync commits the journal, which first writes out the dirty data of every file with
/// newly allocated blocks, so a snapshot of 850 MB (5M keys) left to one final fsync could hold
/// every write's fsync behind it. Synced in pieces, a log fsync waits for at most one piece.
pub const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// A snapshot file being written: fdatasyncs itself every [`SYNC_EVERY_BYTES`].
#[derive(Debug)]
pub struct SyncingFile {
    file: File,
    unsynced: u64,
    syncs: u64,
}

impl SyncingFile {
    pub fn new(file: File) -> SyncingFile {
        SyncingFile {
            file,
            unsynced: 0,
            syncs: 0,
        }
    }

    /// The intermediate syncs so far (the final one is the caller's).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    pub fn into_inner(self) -> File {
        self.file
    }
}

impl Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
            self.syncs += 1;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_once_per_piece_while_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::create(dir.path().join("s")).expect("create");
        let mut out = SyncingFile::new(file);
        let piece = vec![7u8; 256 << 10];
        let pieces = (2 * SYNC_EVERY_BYTES + SYNC_EVERY_BYTES / 2) / piece.len() as u64;
        for _ in 0..pieces {
            out.write_all(&piece).expect("write");
        }
        assert_eq!(out.syncs(), 2, "2.5 pieces written: 2 synced on the way");
        let file = out.into_inner();
        assert_eq!(
            file.metadata().expect("metadata").len(),
            pieces * piece.len() as u64
        );
    }
}
