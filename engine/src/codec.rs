//! Little-endian, fixed-width byte encoding shared by the WAL payloads and snapshot bodies.
//!
//! `Encoder` appends to a `Vec<u8>`; `Decoder` reads from a slice and returns a typed
//! `DecodeError` (never panics) when bytes run out or a value is out of range, because decoders
//! read bytes from disk that may be damaged. No `usize` is ever written: lengths and counts are
//! converted to fixed-width integers and bounded by the caller before they reach the encoder.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated: {field} needs {needed} more bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A field held a value that the format does not allow.
    #[error("invalid {field}: {value}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// The offending value.
        value: u128,
    },
    /// Bytes were left over after the value ended.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Appends little-endian fields to a buffer.
pub struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Encoder<'a> {
        Encoder { out }
    }

    /// Appends a byte.
    pub fn u8(&mut self, value: u8) {
        self.out.push(value);
    }
    /// Appends a little-endian u16.
    pub fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, value: u64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// Appends a little-endian u128.
    pub fn u128(&mut self, value: u128) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, value: &[u8]) {
        self.out.extend_from_slice(value);
    }
    /// Appends a string of at most 255 bytes as a u8 length and its bytes.
    pub fn short_str(&mut self, value: &str) {
        let len = u8::try_from(value.len()).expect("short strings are bounded by the caller");
        self.u8(len);
        self.bytes(value.as_bytes());
    }
}

/// Reads little-endian fields from a slice, with bounds checks on every read.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes, position: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            left => Err(DecodeError::Trailing(left)),
        }
    }

    /// Takes the next `len` bytes.
    pub fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if len > available {
            return Err(DecodeError::Truncated { field, needed: len, available });
        }
        let slice = self
            .bytes
            .get(self.position..self.position + len)
            .ok_or(DecodeError::Truncated { field, needed: len, available })?;
        self.position += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self.take(field, N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(slice);
        Ok(array)
    }

    /// Reads a byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    /// Reads a little-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// Reads a little-endian u128.
    pub fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }
    /// Reads 32 raw bytes (a SHA-256 digest).
    pub fn hash(&mut self, field: &'static str) -> Result<[u8; 32], DecodeError> {
        self.array(field)
    }
    /// Reads a u8-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn short_str(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u8(field)?);
        if len > max {
            return Err(DecodeError::Invalid { field, value: len as u128 });
        }
        let bytes = self.take(field, len)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid { field, value: len as u128 })
    }
    /// Reads a u32 count and checks it against `max` before anything is allocated for it.
    pub fn count(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let count = self.u32(field)?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > max {
            return Err(DecodeError::Invalid { field, value: count as u128 });
        }
        Ok(count)
    }
}

/// Fields at fixed offsets of fixed-size headers (segment and snapshot headers, record
/// frames). Callers check the slice is long enough first: these index directly.
pub mod fixed {
    /// Writes `value` at `offset`.
    pub fn put(bytes: &mut [u8], offset: usize, value: &[u8]) {
        bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    /// The `N` bytes at `offset`.
    pub fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
        let mut array = [0u8; N];
        array.copy_from_slice(&bytes[offset..offset + N]);
        array
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_little_endian() {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(&mut out);
        encoder.u8(1);
        encoder.u16(0x0203);
        encoder.u32(0x0405_0607);
        encoder.u64(8);
        encoder.u128(9);
        encoder.short_str("abc");
        assert_eq!(&out[..7], &[1, 3, 2, 7, 6, 5, 4]);
        let mut decoder = Decoder::new(&out);
        assert_eq!(decoder.u8("a").unwrap(), 1);
        assert_eq!(decoder.u16("b").unwrap(), 0x0203);
        assert_eq!(decoder.u32("c").unwrap(), 0x0405_0607);
        assert_eq!(decoder.u64("d").unwrap(), 8);
        assert_eq!(decoder.u128("e").unwrap(), 9);
        assert_eq!(decoder.short_str("f", 8).unwrap(), "abc");
        decoder.finish().unwrap();
    }

    #[test]
    fn short_input_is_a_typed_error_not_a_panic() {
        let mut decoder = Decoder::new(&[1, 2, 3]);
        assert_eq!(
            decoder.u64("lsn"),
            Err(DecodeError::Truncated { field: "lsn", needed: 8, available: 3 })
        );
        let mut decoder = Decoder::new(&[200, b'a']);
        assert!(matches!(decoder.short_str("name", 32), Err(DecodeError::Invalid { .. })));
        let mut decoder = Decoder::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(decoder.count("postings", 64), Err(DecodeError::Invalid { .. })));
    }
}
