//! Little-endian, fixed-width field reading and writing for frame bodies.
//!
//! `Reader` never panics and never allocates: every read is bounds-checked and a short or
//! out-of-range input is a `WireError` naming the field. No `usize` ever reaches the wire.

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before the field did.
    #[error("truncated at {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A field held a value the protocol does not allow.
    #[error("invalid {field}")]
    Invalid {
        /// The field.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Reads fields from a slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.bytes.len() {
            0 => Ok(()),
            left => Err(WireError::Trailing(left)),
        }
    }

    /// The next `len` bytes.
    pub fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], WireError> {
        if len > self.bytes.len() {
            return Err(WireError::Truncated { field });
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(field, N)?);
        Ok(array)
    }

    /// A byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }
    /// A little-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    /// A little-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// A little-endian i64.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    /// A little-endian u128.
    pub fn u128(&mut self, field: &'static str) -> Result<u128, WireError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }
    /// 32 raw bytes.
    pub fn bytes32(&mut self, field: &'static str) -> Result<[u8; 32], WireError> {
        self.array(field)
    }
}

/// Appends fields to a buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }
    /// A byte.
    pub fn u8(&mut self, value: u8) {
        self.out.push(value);
    }
    /// A little-endian u16.
    pub fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// A little-endian u32.
    pub fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// A little-endian u64.
    pub fn u64(&mut self, value: u64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// A little-endian i64.
    pub fn i64(&mut self, value: i64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// A little-endian u128.
    pub fn u128(&mut self, value: u128) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    /// Raw bytes.
    pub fn bytes(&mut self, value: &[u8]) {
        self.out.extend_from_slice(value);
    }
    /// Bytes written so far (to patch a length in later).
    pub fn position(&self) -> usize {
        self.out.len()
    }
    /// Overwrites the u16 at `position` (written earlier as a placeholder).
    pub fn patch_u16(&mut self, position: usize, value: u16) {
        if let Some(field) = self.out.get_mut(position..position + 2) {
            field.copy_from_slice(&value.to_le_bytes());
        }
    }
}
