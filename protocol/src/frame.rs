//! Frames: the unit of the byte stream. Spec: docs/protocol.md, "Frames".
//!
//! Every frame starts with a 16-byte header: `length: u32` (bytes after this field),
//! `version: u8`, `frame_type: u8`, `reserved: u16` (zero), `request_id: u64`; then the body.
//! `check` decides from the first bytes of a buffer whether a whole frame is there, and refuses
//! a bad header (oversized, wrong version, unknown type) as soon as its 16 bytes have arrived,
//! before anything is buffered for the body. Nothing here allocates on behalf of the peer.

use crate::wire::Reader;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

const LENGTH_OFFSET: usize = 0;
const VERSION_OFFSET: usize = LENGTH_OFFSET + 4;
const TYPE_OFFSET: usize = VERSION_OFFSET + 1;
const RESERVED_OFFSET: usize = TYPE_OFFSET + 1;
const REQUEST_ID_OFFSET: usize = RESERVED_OFFSET + 2;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = REQUEST_ID_OFFSET + 8;
/// Bytes of the length field, which the length does not count.
pub const LENGTH_FIELD_BYTES: usize = 4;

const _: () = assert!(FRAME_HEADER_BYTES == 16);

/// The largest frame any session may allow (the server's `frame_bytes_max` is at most this):
/// 16 MiB, so that a length field can never ask a peer for an absurd buffer.
pub const FRAME_BYTES_LIMIT: usize = 16 * 1024 * 1024;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Client → server, first frame: the terminal id.
    Hello = 1,
    /// Server → client: the nonce to sign.
    Challenge = 2,
    /// Client → server: the HMAC over the nonce.
    Auth = 3,
    /// Server → client: authenticated; the session's limits.
    Welcome = 4,
    /// Client → server: 1..=N operations.
    Request = 16,
    /// Server → client: one result per operation of the request with the same id.
    Response = 17,
    /// Server → client: the request with this id (0: the connection) was refused as a whole.
    Error = 127,
}

impl FrameType {
    /// The frame type with this number.
    pub fn from_u8(value: u8) -> Option<FrameType> {
        Some(match value {
            1 => FrameType::Hello,
            2 => FrameType::Challenge,
            3 => FrameType::Auth,
            4 => FrameType::Welcome,
            16 => FrameType::Request,
            17 => FrameType::Response,
            127 => FrameType::Error,
            _ => return None,
        })
    }
}

/// A frame header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame's type.
    pub frame_type: FrameType,
    /// The client's id for the request this frame is or answers (0 for handshake frames).
    pub request_id: u64,
    /// Bytes of the body.
    pub body_bytes: usize,
}

impl FrameHeader {
    /// Bytes of the whole frame, header included.
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.body_bytes
    }
}

/// Why a frame header is invalid. Each of these ends the connection: after a bad header the
/// stream cannot be resynchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field claims more than the session allows.
    #[error("frame of {bytes} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes the frame claims (header included).
        bytes: u64,
        /// The limit.
        max: usize,
    },
    /// The length field is shorter than the rest of a header.
    #[error("frame length {0} is shorter than a header")]
    TooShort(u32),
    /// An unsupported protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// An unknown frame type.
    #[error("unknown frame type {0}")]
    Type(u8),
    /// The reserved header field is not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
}

/// Checks the start of `buf`: `Ok(None)` if more bytes are needed, `Ok(Some(header))` when a
/// whole frame of `header.frame_bytes()` bytes is at the front, an error when the header is
/// invalid (checked as soon as its 16 bytes are there, whether or not the body has arrived).
pub fn check(buf: &[u8], frame_bytes_max: usize) -> Result<Option<FrameHeader>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let mut reader = Reader::new(header);
    let length = reader.u32("length").map_err(|_| FrameError::TooShort(0))?;
    let version = reader.u8("version").map_err(|_| FrameError::TooShort(length))?;
    let frame_type = reader.u8("frame type").map_err(|_| FrameError::TooShort(length))?;
    let reserved = reader.u16("reserved").map_err(|_| FrameError::TooShort(length))?;
    let request_id = reader.u64("request id").map_err(|_| FrameError::TooShort(length))?;
    let frame_bytes = u64::from(length) + LENGTH_FIELD_BYTES as u64;
    if frame_bytes > frame_bytes_max.min(FRAME_BYTES_LIMIT) as u64 {
        return Err(FrameError::TooLarge { bytes: frame_bytes, max: frame_bytes_max });
    }
    let frame_bytes = usize::try_from(frame_bytes).map_err(|_| FrameError::TooShort(length))?;
    if frame_bytes < FRAME_HEADER_BYTES {
        return Err(FrameError::TooShort(length));
    }
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let frame_type = FrameType::from_u8(frame_type).ok_or(FrameError::Type(frame_type))?;
    if reserved != 0 {
        return Err(FrameError::Reserved);
    }
    let header =
        FrameHeader { frame_type, request_id, body_bytes: frame_bytes - FRAME_HEADER_BYTES };
    Ok((buf.len() >= frame_bytes).then_some(header))
}

/// Appends a frame header for a body of `body_bytes` bytes; the body follows.
pub fn put_header(out: &mut Vec<u8>, frame_type: FrameType, request_id: u64, body_bytes: usize) {
    let length = u32::try_from(FRAME_HEADER_BYTES - LENGTH_FIELD_BYTES + body_bytes)
        .expect("frames are bounded by FRAME_BYTES_LIMIT");
    out.extend_from_slice(&length.to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(frame_type as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
}

/// Starts a frame whose body length is not known yet; `finish_frame` fills it in.
pub fn begin_frame(out: &mut Vec<u8>, frame_type: FrameType, request_id: u64) -> usize {
    let start = out.len();
    put_header(out, frame_type, request_id, 0);
    start
}

/// Writes the length of the frame that `begin_frame` started at `start` and now ends at the
/// end of `out`.
pub fn finish_frame(out: &mut [u8], start: usize) {
    let frame_bytes = out.len() - start;
    assert!(frame_bytes <= FRAME_BYTES_LIMIT, "frames are bounded by FRAME_BYTES_LIMIT");
    let length = u32::try_from(frame_bytes - LENGTH_FIELD_BYTES).expect("bounded above");
    if let Some(field) = out.get_mut(start..start + LENGTH_FIELD_BYTES) {
        field.copy_from_slice(&length.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame_type: FrameType, request_id: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, frame_type, request_id, body.len());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_frame_is_complete_only_with_its_whole_body() {
        let bytes = frame(FrameType::Request, 7, &[1, 2, 3]);
        assert_eq!(bytes.len(), 19);
        for cut in 0..bytes.len() {
            assert_eq!(check(&bytes[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let header = check(&bytes, 1024).unwrap().unwrap();
        assert_eq!(header.frame_type, FrameType::Request);
        assert_eq!(header.request_id, 7);
        assert_eq!(header.body_bytes, 3);
        assert_eq!(header.frame_bytes(), 19);
    }

    #[test]
    fn bad_headers_are_refused_before_the_body_arrives() {
        let mut big = frame(FrameType::Request, 1, &[]);
        big[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(check(&big, 1024), Err(FrameError::TooLarge { .. })));
        let mut short = frame(FrameType::Request, 1, &[]);
        short[..4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(check(&short, 1024), Err(FrameError::TooShort(3)));
        let mut version = frame(FrameType::Request, 1, &[0; 8]);
        version[4] = 9;
        assert_eq!(check(&version[..16], 1024), Err(FrameError::Version(9)));
        let mut kind = frame(FrameType::Request, 1, &[]);
        kind[5] = 99;
        assert_eq!(check(&kind, 1024), Err(FrameError::Type(99)));
        let mut reserved = frame(FrameType::Request, 1, &[]);
        reserved[6] = 1;
        assert_eq!(check(&reserved, 1024), Err(FrameError::Reserved));
        // Exactly at the limit is fine.
        let body = vec![0u8; 1024 - FRAME_HEADER_BYTES];
        assert!(check(&frame(FrameType::Request, 1, &body), 1024).unwrap().is_some());
    }

    #[test]
    fn begin_and_finish_frame_write_the_length() {
        let mut out = vec![9, 9];
        let start = begin_frame(&mut out, FrameType::Response, 5);
        out.extend_from_slice(&[1, 2, 3, 4]);
        finish_frame(&mut out, start);
        assert_eq!(out[..2], [9, 9]);
        assert_eq!(check(&out[2..], 1024).unwrap().unwrap().body_bytes, 4);
    }
}
