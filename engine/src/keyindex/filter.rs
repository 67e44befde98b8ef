//! The filter of a key-index run: a split block Bloom filter, as specified for Apache Parquet
//! (`parquet-format`, "BloomFilter.md"), so that an independent reader can test a key with a
//! published algorithm. Spec here: docs/key-index-format.md, "Filter".
//!
//! A filter is an array of 32-byte blocks of eight `u32` words. A key's 64-bit hash picks one
//! block by its high 32 bits, and sets (or tests) one bit in each of the block's eight words,
//! chosen by its low 32 bits times eight odd constants. So a test reads one 32-byte block:
//! one cache line, whatever the filter's size. With 16 bits per key (a block per 16 keys) a
//! fresh key is taken for a present one about once in a few hundred lookups
//! (docs/performance.md, "Key index").

/// Words of a block.
pub const BLOCK_WORDS: usize = 8;
/// Bytes of a block.
pub const BLOCK_BYTES: usize = BLOCK_WORDS * 4;
/// Keys per block the writer sizes filters for: 16 bits of filter per key.
pub const KEYS_PER_BLOCK: usize = 16;

/// The salts of the Parquet split block Bloom filter.
const SALT: [u32; BLOCK_WORDS] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// A split block Bloom filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `blocks × 8` words.
    words: Vec<u32>,
}

impl Filter {
    /// An empty filter sized for `keys` keys (at least one block).
    pub fn for_keys(keys: usize) -> Filter {
        Filter { words: vec![0; keys.div_ceil(KEYS_PER_BLOCK).max(1) * BLOCK_WORDS] }
    }

    /// The filter whose blocks are `bytes` (little-endian words); `None` unless `bytes` is a
    /// whole, non-zero number of blocks.
    pub fn from_bytes(bytes: &[u8]) -> Option<Filter> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK_BYTES) {
            return None;
        }
        let words = bytes
            .chunks_exact(4)
            .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
            .collect();
        Some(Filter { words })
    }

    /// The filter's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|word| word.to_le_bytes()).collect()
    }

    /// Blocks of the filter.
    pub fn blocks(&self) -> usize {
        self.words.len() / BLOCK_WORDS
    }

    fn block(&self, hash: u64) -> usize {
        let blocks = self.blocks() as u64;
        let index = ((hash >> 32) * blocks) >> 32;
        usize::try_from(index).expect("below the block count") * BLOCK_WORDS
    }

    fn masks(hash: u64) -> [u32; BLOCK_WORDS] {
        let low = hash as u32;
        SALT.map(|salt| 1u32 << (low.wrapping_mul(salt) >> 27))
    }

    /// Adds a key by its hash.
    pub fn insert(&mut self, hash: u64) {
        let start = self.block(hash);
        for (word, mask) in self.words[start..start + BLOCK_WORDS].iter_mut().zip(Self::masks(hash))
        {
            *word |= mask;
        }
    }

    /// Whether a key with this hash may have been added (false: certainly not).
    pub fn may_contain(&self, hash: u64) -> bool {
        let start = self.block(hash);
        self.words[start..start + BLOCK_WORDS]
            .iter()
            .zip(Self::masks(hash))
            .all(|(word, mask)| word & mask != 0)
    }

    /// Starts loading the block a lookup of `hash` reads.
    pub fn prefetch(&self, hash: u64) {
        crate::prefetch::prefetch_read(&self.words[self.block(hash)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(value: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&value.to_le_bytes())
    }

    #[test]
    fn added_keys_are_always_found_and_few_others_are() {
        let keys = 10_000u64;
        let mut filter = Filter::for_keys(keys as usize);
        for key in 0..keys {
            filter.insert(hash(key));
        }
        assert!((0..keys).all(|key| filter.may_contain(hash(key))));
        let false_positives =
            (keys..keys + 100_000).filter(|key| filter.may_contain(hash(*key))).count();
        // 16 bits per key: well under 1 % (about 0.1 % measured).
        assert!(false_positives < 1_000, "{false_positives} of 100,000");
        let bytes = filter.to_bytes();
        assert_eq!(bytes.len(), keys.div_ceil(16) as usize * 32);
        assert_eq!(Filter::from_bytes(&bytes), Some(filter));
        assert_eq!(Filter::from_bytes(&bytes[..31]), None);
        assert_eq!(Filter::from_bytes(&[]), None);
    }

    #[test]
    fn the_bits_are_those_of_the_parquet_algorithm() {
        // One block; hash 0x0000_0001_0000_0001: block 0, and word i gets bit SALT[i] >> 27.
        let mut filter = Filter::for_keys(1);
        filter.insert(0x0000_0001_0000_0001);
        let expected: Vec<u32> = SALT.iter().map(|salt| 1 << (salt >> 27)).collect();
        assert_eq!(filter.words, expected);
    }
}
