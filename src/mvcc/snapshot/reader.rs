//! The snapshot stream's reader: decodes fields from a [`BufRead`]'s buffer in place and hashes
//! what it read in one piece per buffer. A crc32 update per field (eight bytes, say) cost more
//! than decoding the field: ≈ 7 % of a 1M-key snapshot load went to `update_4_to_15`.

use std::io;
use std::io::BufRead;
use std::io::Read;

use super::SnapshotError;
use super::WRITE_BUFFER_BYTES;
use crate::mvcc::history::Entry;
use crate::mvcc::keys::Shared;
use crate::mvcc::revision::Revision;

/// Reads the stream's fields from `inner` and keeps the crc32 of every byte read.
pub(super) struct CrcReader<R: BufRead> {
    inner: R,
    crc: crc32fast::Hasher,
    /// Bytes read and hashed (consumed from `inner`).
    offset: u64,
    /// Bytes at the front of `inner`'s buffer read but not yet hashed or consumed.
    taken: usize,
    /// Reused for a field that spans two buffers (at most `WRITE_BUFFER_BYTES` kept).
    scratch: Vec<u8>,
}

impl<R: BufRead> CrcReader<R> {
    pub fn new(inner: R) -> Self {
        CrcReader {
            inner,
            crc: crc32fast::Hasher::new(),
            offset: 0,
            taken: 0,
            scratch: Vec::new(),
        }
    }

    pub fn corrupt(&self, detail: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.offset + self.taken as u64,
            detail: detail.into(),
        }
    }

    fn io(&self, e: io::Error) -> SnapshotError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.corrupt("truncated")
        } else {
            SnapshotError::Io(e)
        }
    }

    /// Hashes and consumes the bytes taken from the buffer. Must run before anything is read
    /// from `inner` past its buffer, so the crc sees the bytes in stream order.
    fn settle(&mut self) -> Result<(), SnapshotError> {
        if self.taken > 0 {
            // The buffer still holds the taken bytes: this refills nothing.
            let buf = self.inner.fill_buf().map_err(SnapshotError::Io)?;
            self.crc.update(&buf[..self.taken]);
            self.inner.consume(self.taken);
            self.offset += self.taken as u64;
            self.taken = 0;
        }
        Ok(())
    }

    /// The next `n` bytes if the buffer holds them (taken), `None` if they span buffers.
    fn take(&mut self, n: usize) -> Result<Option<&[u8]>, SnapshotError> {
        let taken = self.taken;
        let buf = self.inner.fill_buf().map_err(SnapshotError::Io)?;
        if buf.len() - taken < n {
            return Ok(None);
        }
        self.taken += n;
        Ok(Some(&buf[taken..taken + n]))
    }

    /// The checksum of every byte read so far.
    pub fn crc(&mut self) -> Result<u32, SnapshotError> {
        self.settle()?;
        Ok(self.crc.clone().finalize())
    }

    /// The next `N` bytes, not hashed: the stored checksum after the stream.
    pub fn trailer<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        self.settle()?;
        let mut out = [0u8; N];
        self.inner.read_exact(&mut out).map_err(|e| self.io(e))?;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        if let Some(bytes) = self.take(N)? {
            out.copy_from_slice(bytes);
            return Ok(out);
        }
        self.settle()?;
        self.inner.read_exact(&mut out).map_err(|e| self.io(e))?;
        self.crc.update(&out);
        self.offset += N as u64;
        Ok(out)
    }

    pub fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn len(&mut self, max: usize, what: &str) -> Result<usize, SnapshotError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        if n > max {
            return Err(self.corrupt(format!("{what} {n} over {max}")));
        }
        Ok(n)
    }

    pub fn bytes(&mut self, max: usize, what: &str) -> Result<Shared, SnapshotError> {
        let n = self.len(max, what)?;
        if let Some(bytes) = self.take(n)? {
            return Ok(Shared::from(bytes));
        }
        self.settle()?;
        // Grow as bytes arrive: a damaged length costs no more memory than the stream holds.
        // The scratch buffer is reused; the store's copy is one allocation of exactly `n`.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.reserve(n.min(WRITE_BUFFER_BYTES));
        let got = (&mut self.inner)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(SnapshotError::Io)?;
        self.crc.update(&buf);
        self.offset += got as u64;
        if got < n {
            return Err(self.corrupt("truncated"));
        }
        let out = Shared::from(&buf[..]);
        if buf.capacity() <= WRITE_BUFFER_BYTES {
            self.scratch = buf;
        }
        Ok(out)
    }

    pub fn entry(&mut self) -> Result<Entry, SnapshotError> {
        let rev = Revision::new(self.i64()?, self.i64()?);
        match self.array::<1>()? {
            [0] => Ok(Entry {
                rev,
                create: 0,
                version: 0,
                lease: 0,
                value: None,
            }),
            [1] => {
                let (create, version, lease) = (self.i64()?, self.i64()?, self.i64()?);
                let value = Some(self.bytes(crate::mvcc::VALUE_BYTES_MAX, "value")?);
                Ok(Entry {
                    rev,
                    create,
                    version,
                    lease,
                    value,
                })
            }
            [k] => Err(self.corrupt(format!("unknown entry kind {k}"))),
        }
    }
}
