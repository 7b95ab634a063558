//! A buffered reader that keeps the crc32 of the bytes consumed from it.

use std::io;
use std::io::BufRead;
use std::io::Read;

/// Buffers `inner` and hashes each byte as it is consumed — in one piece per call, so the
/// store's decoder (which consumes a buffer's worth at a time) hashes in large pieces. Bytes
/// buffered but not consumed (the stored checksum, read with [`HashedReader::unhashed`]) are
/// not hashed.
pub struct HashedReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    crc: crc32fast::Hasher,
}

impl<R: Read> HashedReader<R> {
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        HashedReader {
            inner,
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            pos: 0,
            filled: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// The crc32 of every byte consumed so far.
    pub fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// Reads exactly `out.len()` bytes without hashing them.
    pub fn unhashed(&mut self, out: &mut [u8]) -> io::Result<()> {
        let crc = self.crc.clone();
        let read = self.read_exact(out);
        self.crc = crc;
        read
    }
}

impl<R: Read> BufRead for HashedReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.filled {
            self.filled = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amount: usize) {
        let end = (self.pos + amount).min(self.filled);
        self.crc.update(&self.buf[self.pos..end]);
        self.pos = end;
    }
}

impl<R: Read> Read for HashedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_was_consumed_in_any_pieces_and_nothing_else() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (body, tail) = data.split_at(data.len() - 4);
        // A tiny buffer, so fields span refills.
        let mut r = HashedReader::with_capacity(7, &data[..]);
        let mut got = Vec::new();
        let mut piece = 1;
        while got.len() < body.len() {
            let n = piece.min(body.len() - got.len());
            let mut out = vec![0; n];
            r.read_exact(&mut out).expect("read");
            got.extend_from_slice(&out);
            piece = piece % 13 + 1;
        }
        assert_eq!(got, body);
        assert_eq!(r.crc(), crc32fast::hash(body));
        let mut last = [0u8; 4];
        r.unhashed(&mut last).expect("tail");
        assert_eq!(last, tail);
        assert_eq!(r.crc(), crc32fast::hash(body), "the tail is not hashed");
        assert_eq!(r.read(&mut [0u8; 1]).expect("eof"), 0);
    }
}
