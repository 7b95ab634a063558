//! How raft-log stores raftkv's log ids, votes and entry payloads: each a length-framed record
//! (the length written twice, the second time complemented), log ids and votes postcard-encoded.

use std::fmt;
use std::io;
use std::io::Read;
use std::io::Write;

use bytes::Bytes;
use raft_log::codeq::Decode;
use raft_log::codeq::Encode;

use crate::raft::types::LogId;
use crate::raft::types::Vote;

/// Largest encoded log id, vote or entry payload accepted; larger lengths on disk are corruption.
const MAX_FRAME_LEN: u32 = 1 << 30;

/// Writes `bytes` as `[len: u32 BE][!len: u32 BE][bytes]`. The complemented copy of the length
/// turns a damaged length into `InvalidData` instead of a long read ending in `UnexpectedEof`,
/// which raft-log would mistake for a torn tail and silently cut off.
fn write_frame<W: Write>(mut w: W, bytes: &[u8]) -> io::Result<usize> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "log record too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&(!len).to_be_bytes())?;
    w.write_all(bytes)?;
    Ok(8 + bytes.len())
}

fn read_frame<R: Read>(mut r: R) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 8];
    r.read_exact(&mut header)?;
    let [a, b, c, d, e, f, g, h] = header;
    let len = u32::from_be_bytes([a, b, c, d]);
    if u32::from_be_bytes([e, f, g, h]) != !len || len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "damaged frame length",
        ));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

pub(super) fn invalid_data(e: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn encode_postcard<T: serde::Serialize, W: Write>(value: &T, w: W) -> io::Result<usize> {
    write_frame(w, &postcard::to_allocvec(value).map_err(invalid_data)?)
}

fn decode_postcard<T: serde::de::DeserializeOwned, R: Read>(r: R) -> io::Result<T> {
    postcard::from_bytes(&read_frame(r)?).map_err(invalid_data)
}

/// An openraft log id as raft-log stores it (orphan rule: codeq's traits need a local type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WalLogId(pub(crate) LogId);

/// An openraft vote as raft-log stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
pub(crate) struct WalVote(pub(crate) Vote);

/// An entry payload, kept postcard-encoded so raft-log's payload cache holds its real size and
/// cloning a cached payload is a reference-count increment.
#[derive(Debug, Clone)]
pub(crate) struct WalPayload(pub(crate) Bytes);

impl Encode for WalLogId {
    fn encode<W: Write>(&self, w: W) -> io::Result<usize> {
        encode_postcard(&self.0, w)
    }
}
impl Decode for WalLogId {
    fn decode<R: Read>(r: R) -> io::Result<Self> {
        decode_postcard(r).map(Self)
    }
}
impl Encode for WalVote {
    fn encode<W: Write>(&self, w: W) -> io::Result<usize> {
        encode_postcard(&self.0, w)
    }
}
impl Decode for WalVote {
    fn decode<R: Read>(r: R) -> io::Result<Self> {
        decode_postcard(r).map(Self)
    }
}
impl Encode for WalPayload {
    fn encode<W: Write>(&self, w: W) -> io::Result<usize> {
        write_frame(w, &self.0)
    }
}
impl Decode for WalPayload {
    fn decode<R: Read>(r: R) -> io::Result<Self> {
        read_frame(r).map(|v| Self(Bytes::from(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_with_a_damaged_length_is_invalid_data_not_a_torn_tail() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").expect("write");
        assert_eq!(read_frame(&buf[..]).expect("read"), b"hello");
        buf[3] ^= 0x40; // length now says 69 bytes: must not read on to EOF
        let damaged = read_frame(&buf[..]).expect_err("damaged");
        assert_eq!(damaged.kind(), io::ErrorKind::InvalidData);
        let torn = read_frame(&buf[..6]).expect_err("torn");
        assert_eq!(torn.kind(), io::ErrorKind::UnexpectedEof);
    }
}
