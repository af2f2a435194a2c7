//! Partitioning: which partition of a projection handles an event.
//!
//! Every event stores `partition_hash`, SipHash-1-3 of its aggregate id under the fixed key
//! [`PARTITION_HASH_KEY`]. A projection with `n` partitions hands the event to partition
//! `partition_hash % n`, so all events of one aggregate go to the same partition, in order.
//! The hash and its key are part of the on-disk format: they must never change.

use std::fmt;
use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// The fixed SipHash-1-3 key `(k0, k1)` of [`partition_hash`]. Never change it: stored events
/// carry hashes made with it.
pub const PARTITION_HASH_KEY: (u64, u64) = (0x7075_7073_6f75_7263, 0x6570_6172_7469_7469);

/// SipHash-1-3 of the aggregate id's UTF-8 bytes under [`PARTITION_HASH_KEY`].
///
/// ```
/// let h = pupsource::partition::partition_hash("user-42");
/// assert_eq!(h, pupsource::partition::partition_hash("user-42"));
/// assert!(pupsource::partition::partition_of(h, 4) < 4);
/// ```
pub fn partition_hash(aggregate_id: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(PARTITION_HASH_KEY.0, PARTITION_HASH_KEY.1);
    hasher.write(aggregate_id.as_bytes());
    hasher.finish()
}

/// The partition, among `partitions`, that owns events with this hash.
///
/// `partitions` is a partition count and is at least 1; 0 is treated as 1.
pub fn partition_of(hash: u64, partitions: u32) -> u32 {
    let n = u64::from(partitions.max(1));
    // The remainder is below `partitions`, so it fits.
    u32::try_from(hash % n).unwrap_or(0)
}

/// One partition of a projection: `index` among `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// This partition, from 0.
    pub index: u32,
    /// How many partitions there are.
    pub count: u32,
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent SipHash-1-3 (one compression round, three finalization rounds), written from
    /// the paper, to prove the stored hash is exactly that function under the fixed key.
    fn reference_siphash13(k0: u64, k1: u64, data: &[u8]) -> u64 {
        let mut v = [
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ];
        fn round(v: &mut [u64; 4]) {
            v[0] = v[0].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(13) ^ v[0];
            v[0] = v[0].rotate_left(32);
            v[2] = v[2].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(16) ^ v[2];
            v[0] = v[0].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(21) ^ v[0];
            v[2] = v[2].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(17) ^ v[2];
            v[2] = v[2].rotate_left(32);
        }
        let mut chunks = data.chunks_exact(8);
        for chunk in &mut chunks {
            let m = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            v[3] ^= m;
            round(&mut v);
            v[0] ^= m;
        }
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        last[7] = data.len() as u8;
        let m = u64::from_le_bytes(last);
        v[3] ^= m;
        round(&mut v);
        v[0] ^= m;
        v[2] ^= 0xff;
        for _ in 0..3 {
            round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }

    /// The reference implementation reproduces the published SipHash-1-3 vector for the key
    /// `00 01 .. 0f` and the empty message.
    #[test]
    fn reference_matches_the_published_vector() {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(reference_siphash13(k0, k1, b""), 0xabac_0158_050f_c4dc);
    }

    #[test]
    fn partition_hash_is_siphash13_under_the_fixed_key() {
        for id in ["", "a", "user-42", "0123456789abcdef0123", "ünïcødé", "x".repeat(100).as_str()]
        {
            let (k0, k1) = PARTITION_HASH_KEY;
            assert_eq!(partition_hash(id), reference_siphash13(k0, k1, id.as_bytes()), "{id:?}");
        }
    }

    /// The on-disk format: these values are stored in every event row. If this test fails,
    /// the hash or its key changed, and every existing log would be partitioned differently.
    #[test]
    fn partition_hash_known_values_never_change() {
        assert_eq!(PARTITION_HASH_KEY, (0x7075_7073_6f75_7263, 0x6570_6172_7469_7469));
        assert_eq!(partition_hash(""), 0x0cf7_0a34_ae2b_6b09);
        assert_eq!(partition_hash("user-42"), 0x229b_abe7_a5b6_3625);
        assert_eq!(partition_hash("ünïcødé"), 0x3875_db0d_d6f5_1442);
    }

    #[test]
    fn partition_of_is_in_range_and_zero_count_is_one() {
        for hash in [0, 1, u64::MAX, 0xdead_beef] {
            for n in 1..=16 {
                assert!(partition_of(hash, n) < n);
            }
            assert_eq!(partition_of(hash, 0), 0);
        }
    }
}
