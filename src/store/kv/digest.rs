//! The live keys' digest: a wrapping sum of one 64-bit FNV-1a hash per live kv, so it can be
//! kept current from each write's changes (subtract the old kv's hash, add the new one's) and
//! computed over a whole store in any order.
//!
//! Invariant: the hash of a kv is FNV-1a over `len(key) ‖ key ‖ len(value) ‖ value ‖
//! create_revision ‖ mod_revision ‖ version ‖ lease` (lengths and numbers 8 bytes little-endian),
//! the same in every version (replicas of different versions compare digests).

use bytes::Bytes;

use crate::mvcc;
use crate::mvcc::KeyValue;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// The hash of one live kv.
#[cfg(test)]
pub(super) fn kv_hash(kv: &KeyValue) -> u64 {
    kv_hash_of(borrowed(kv))
}

/// `kv` as a [`mvcc::LiveRef`].
pub(super) fn borrowed(kv: &KeyValue) -> mvcc::LiveRef<'_> {
    mvcc::LiveRef {
        key: &kv.key,
        value: &kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

/// [`kv_hash`] of a borrowed live kv.
#[cfg(test)]
fn kv_hash_of(kv: mvcc::LiveRef<'_>) -> u64 {
    let mut hash = FNV_OFFSET;
    each_part(kv, |bytes| hash = fnv1a(hash, bytes));
    hash
}

/// The bytes a kv's hash covers, part by part, in order.
fn each_part(kv: mvcc::LiveRef<'_>, mut f: impl FnMut(&[u8])) {
    f(&(kv.key.len() as u64).to_le_bytes());
    f(kv.key);
    f(&(kv.value.len() as u64).to_le_bytes());
    f(kv.value);
    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        f(&n.to_le_bytes());
    }
}

/// 64-bit FNV-1a (same constants as `raft::types::node_id_from_name`), continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1a of four messages at once: FNV-1a is one dependent multiply per byte, so one message
/// at a time leaves the multiplier idle between bytes; four in lockstep keep it busy. The same
/// results as [`fnv1a`] of each.
fn fnv1a_x4(m: [&[u8]; 4]) -> [u64; 4] {
    let common = m.iter().map(|s| s.len()).min().unwrap_or(0);
    let mut h = [FNV_OFFSET; 4];
    let lanes = m[0][..common]
        .iter()
        .zip(&m[1][..common])
        .zip(&m[2][..common])
        .zip(&m[3][..common]);
    for (((a, b), c), d) in lanes {
        h[0] = (h[0] ^ u64::from(*a)).wrapping_mul(FNV_PRIME);
        h[1] = (h[1] ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
        h[2] = (h[2] ^ u64::from(*c)).wrapping_mul(FNV_PRIME);
        h[3] = (h[3] ^ u64::from(*d)).wrapping_mul(FNV_PRIME);
    }
    for (h, m) in h.iter_mut().zip(m) {
        *h = fnv1a(*h, &m[common..]);
    }
    h
}

/// A change of the digest, gathered one kv at a time: the wrapping sum of the hashes of kvs
/// that became live minus those of kvs that stopped being live. Hashes four kvs at a time
/// ([`fnv1a_x4`]); [`DigestDelta::finish`] hashes the rest. Applying a batch of overwrites
/// hashed each new and each replaced kv on its own: 12–14 % of a replay (BENCHMARKS.md).
#[derive(Debug, Default)]
pub struct DigestDelta {
    sum: u64,
    /// The hashed bytes of up to 3 kvs not hashed yet (and a 4th being added), and whether
    /// each is subtracted.
    pending: [Vec<u8>; 4],
    minus: [bool; 4],
    pending_n: usize,
}

impl DigestDelta {
    /// `kv` became live.
    pub fn add(&mut self, kv: mvcc::LiveRef<'_>) {
        self.push(kv, false);
    }

    /// `kv` stopped being live (overwritten or deleted).
    pub fn sub(&mut self, kv: mvcc::LiveRef<'_>) {
        self.push(kv, true);
    }

    fn push(&mut self, kv: mvcc::LiveRef<'_>, minus: bool) {
        let buf = &mut self.pending[self.pending_n];
        buf.clear();
        each_part(kv, |bytes| buf.extend_from_slice(bytes));
        self.minus[self.pending_n] = minus;
        self.pending_n += 1;
        if self.pending_n == 4 {
            let [a, b, c, d] = &self.pending;
            let hashes = fnv1a_x4([a, b, c, d]);
            for (h, minus) in hashes.into_iter().zip(self.minus) {
                self.sum = signed(self.sum, h, minus);
            }
            self.pending_n = 0;
        }
    }

    /// The change to add (wrapping) to a digest.
    pub fn finish(mut self) -> u64 {
        for (buf, minus) in self.pending[..self.pending_n].iter().zip(self.minus) {
            self.sum = signed(self.sum, fnv1a(FNV_OFFSET, buf), minus);
        }
        self.sum
    }
}

fn signed(sum: u64, hash: u64, minus: bool) -> u64 {
    if minus {
        sum.wrapping_sub(hash)
    } else {
        sum.wrapping_add(hash)
    }
}

/// What a [`super::KvState`] derives from its live keys, gathered one key at a time in any
/// order (while a snapshot is decoded): their count, their digest and which lease holds which
/// key.
#[derive(Debug, Default)]
pub struct LiveSummary {
    live_keys: usize,
    digest: DigestDelta,
    leased: Vec<(i64, Bytes)>,
}

impl LiveSummary {
    pub fn add(&mut self, kv: mvcc::LiveRef<'_>) {
        self.live_keys += 1;
        if kv.lease != 0 {
            self.leased.push((kv.lease, Bytes::copy_from_slice(kv.key)));
        }
        self.digest.add(kv);
    }

    /// The live keys' count, digest and `(lease, key)` holders.
    pub fn finish(self) -> (usize, u64, Vec<(i64, Bytes)>) {
        (self.live_keys, self.digest.finish(), self.leased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(i: usize) -> KeyValue {
        KeyValue {
            key: Bytes::from(format!("key-{i}").repeat(i % 3 + 1)),
            value: Bytes::from(vec![i as u8; i * 7 % 41]),
            create_revision: i as i64,
            mod_revision: 2 * i as i64,
            version: 3,
            lease: (i % 2) as i64,
        }
    }

    #[test]
    fn four_in_lockstep_hash_as_one_at_a_time() {
        let msgs: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 + 1; 10 * i]).collect();
        let lockstep = fnv1a_x4([&msgs[0], &msgs[1], &msgs[2], &msgs[3]]);
        let single: Vec<u64> = msgs.iter().map(|m| fnv1a(FNV_OFFSET, m)).collect();
        assert_eq!(lockstep.to_vec(), single);
    }

    #[test]
    fn a_summary_sums_the_same_hashes_as_kv_hash_whatever_the_count() {
        for n in [0, 1, 3, 4, 5, 9, 13] {
            let kvs: Vec<KeyValue> = (0..n).map(kv).collect();
            let mut summary = LiveSummary::default();
            for kv in &kvs {
                summary.add(borrowed(kv));
            }
            let (count, digest, leased) = summary.finish();
            let want = kvs.iter().fold(0u64, |s, kv| s.wrapping_add(kv_hash(kv)));
            assert_eq!((count, digest), (n, want), "{n} kvs");
            assert_eq!(leased.len(), kvs.iter().filter(|kv| kv.lease != 0).count());
        }
    }

    #[test]
    fn a_delta_adds_and_subtracts_the_same_hashes_as_kv_hash_whatever_the_mix() {
        for n in [0, 1, 3, 4, 5, 8, 9, 13] {
            let kvs: Vec<KeyValue> = (0..n).map(kv).collect();
            let mut delta = DigestDelta::default();
            let mut want = 0u64;
            for (i, kv) in kvs.iter().enumerate() {
                if i % 3 == 1 {
                    delta.sub(borrowed(kv));
                    want = want.wrapping_sub(kv_hash(kv));
                } else {
                    delta.add(borrowed(kv));
                    want = want.wrapping_add(kv_hash(kv));
                }
            }
            assert_eq!(delta.finish(), want, "{n} kvs");
        }
    }

    #[test]
    fn the_hash_of_a_kv_is_fnv1a_over_its_parts() {
        // Pinned: digests are compared across versions.
        let kv = KeyValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            create_revision: 2,
            mod_revision: 3,
            version: 1,
            lease: 0,
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.push(b'v');
        for n in [2i64, 3, 1, 0] {
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        let mut want: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            want ^= u64::from(b);
            want = want.wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(kv_hash(&kv), want);
    }
}
