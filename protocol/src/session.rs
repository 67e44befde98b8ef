//! The handshake and the error frame. Spec: docs/protocol.md, "Handshake" and "Errors".
//!
//! 1. The client sends `Hello` with its terminal id.
//! 2. The server answers `Challenge` with 32 random bytes (a fresh nonce per connection).
//! 3. The client answers `Auth` with `HMAC-SHA256(secret, "LDGR-AUTH-1" ‖ terminal ‖ nonce)`.
//! 4. The server compares in constant time and answers `Welcome` with the session's limits,
//!    or an `Error` frame (`auth_failed`) and closes.
//!
//! The terminal's secret never crosses the wire, and a recorded `Auth` is useless on another
//! connection because the nonce differs.

use hmac::{KeyInit, Mac};

use crate::frame::{FRAME_HEADER_BYTES, FrameType, put_header};
use crate::status::Status;
use crate::wire::{Reader, WireError, Writer};

/// Bytes of a challenge nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of an authentication MAC.
pub const MAC_BYTES: usize = 32;
/// Domain separation for the MAC: a MAC made for another purpose is never a valid `Auth`.
pub const AUTH_CONTEXT: &[u8] = b"LDGR-AUTH-1";
/// Bytes of a `Welcome` body.
pub const WELCOME_BYTES: usize = 4 + 2 + 2 + 4 + 2 + 2 + 8;
/// Longest message an error frame carries.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;
/// Bytes of a `Hello` body: terminal id and reserved.
pub const HELLO_BYTES: usize = 4 + 4;
/// The largest frame a server reads before its `Welcome`, header included: the largest
/// handshake frame a client sends (an `Auth`, 48 bytes). An unauthenticated peer can make the
/// server buffer no more than this; a longer frame is `frame_too_large` from its header alone.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + MAC_BYTES;

const _: () = assert!(FRAME_HEADER_BYTES + HELLO_BYTES <= HANDSHAKE_FRAME_BYTES_MAX);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac_for(secret: &[u8], terminal: u32, nonce: &[u8; NONCE_BYTES]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(AUTH_CONTEXT);
    mac.update(&terminal.to_le_bytes());
    mac.update(nonce);
    mac
}

/// The MAC a terminal sends to answer `nonce`.
pub fn auth_mac(secret: &[u8], terminal: u32, nonce: &[u8; NONCE_BYTES]) -> [u8; MAC_BYTES] {
    let bytes = mac_for(secret, terminal, nonce).finalize().into_bytes();
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&bytes);
    out
}

/// Whether `mac` answers `nonce` for this terminal and secret, compared in constant time.
pub fn verify_auth_mac(
    secret: &[u8],
    terminal: u32,
    nonce: &[u8; NONCE_BYTES],
    mac: &[u8; MAC_BYTES],
) -> bool {
    mac_for(secret, terminal, nonce).verify_slice(mac).is_ok()
}

/// The limits of a session, announced by `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Largest frame the server accepts, header included.
    pub frame_bytes_max: u32,
    /// Most operations in one request.
    pub batch_ops_max: u16,
    /// Most requests unanswered on this connection.
    pub in_flight_max: u16,
    /// Operations per second the terminal may send (over all its connections).
    pub rate_per_second: u32,
    /// Shards of the server (for information: routing is the server's job).
    pub shard_count: u16,
    /// The server's id for this connection, as it appears in its logs.
    pub session: u64,
}

/// Appends a `Hello` frame.
pub fn encode_hello(out: &mut Vec<u8>, terminal: u32) {
    put_header(out, FrameType::Hello, 0, HELLO_BYTES);
    let mut writer = Writer::new(out);
    writer.u32(terminal);
    writer.u32(0);
}

/// The terminal id of a `Hello` body.
pub fn decode_hello(body: &[u8]) -> Result<u32, WireError> {
    let mut reader = Reader::new(body);
    let terminal = reader.u32("terminal")?;
    if reader.u32("reserved")? != 0 {
        return Err(WireError::Invalid { field: "reserved" });
    }
    reader.finish()?;
    Ok(terminal)
}

/// Appends a `Challenge` frame.
pub fn encode_challenge(out: &mut Vec<u8>, nonce: &[u8; NONCE_BYTES]) {
    put_header(out, FrameType::Challenge, 0, NONCE_BYTES);
    out.extend_from_slice(nonce);
}

/// The nonce of a `Challenge` body.
pub fn decode_challenge(body: &[u8]) -> Result<[u8; NONCE_BYTES], WireError> {
    let mut reader = Reader::new(body);
    let nonce = reader.bytes32("nonce")?;
    reader.finish()?;
    Ok(nonce)
}

/// Appends an `Auth` frame.
pub fn encode_auth(out: &mut Vec<u8>, mac: &[u8; MAC_BYTES]) {
    put_header(out, FrameType::Auth, 0, MAC_BYTES);
    out.extend_from_slice(mac);
}

/// The MAC of an `Auth` body.
pub fn decode_auth(body: &[u8]) -> Result<[u8; MAC_BYTES], WireError> {
    let mut reader = Reader::new(body);
    let mac = reader.bytes32("mac")?;
    reader.finish()?;
    Ok(mac)
}

/// Appends a `Welcome` frame.
pub fn encode_welcome(out: &mut Vec<u8>, welcome: &Welcome) {
    put_header(out, FrameType::Welcome, 0, WELCOME_BYTES);
    let mut writer = Writer::new(out);
    writer.u32(welcome.frame_bytes_max);
    writer.u16(welcome.batch_ops_max);
    writer.u16(welcome.in_flight_max);
    writer.u32(welcome.rate_per_second);
    writer.u16(welcome.shard_count);
    writer.u16(0);
    writer.u64(welcome.session);
}

/// A `Welcome` body.
pub fn decode_welcome(body: &[u8]) -> Result<Welcome, WireError> {
    let mut reader = Reader::new(body);
    let welcome = Welcome {
        frame_bytes_max: reader.u32("frame bytes max")?,
        batch_ops_max: reader.u16("batch ops max")?,
        in_flight_max: reader.u16("in flight max")?,
        rate_per_second: reader.u32("rate")?,
        shard_count: reader.u16("shard count")?,
        session: {
            reader.u16("reserved")?;
            reader.u64("session")?
        },
    };
    reader.finish()?;
    Ok(welcome)
}

/// Appends an `Error` frame: the request `request_id` (0: the connection) was refused whole.
/// The message is for people and is cut to `ERROR_MESSAGE_BYTES_MAX` bytes.
pub fn encode_error(out: &mut Vec<u8>, request_id: u64, status: Status, message: &str) {
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = message.get(..end).unwrap_or("");
    put_header(out, FrameType::Error, request_id, 4 + message.len());
    let mut writer = Writer::new(out);
    writer.u16(status.code());
    writer.u16(u16::try_from(message.len()).expect("bounded above"));
    writer.bytes(message.as_bytes());
}

/// An `Error` body: the status and the message.
pub fn decode_error(body: &[u8]) -> Result<(Status, String), WireError> {
    let mut reader = Reader::new(body);
    let status = reader.u16("status")?;
    let status = Status::from_code(status).ok_or(WireError::Invalid { field: "status" })?;
    let len = usize::from(reader.u16("message length")?);
    let message = reader.take("message", len)?;
    reader.finish()?;
    Ok((status, String::from_utf8_lossy(message).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::check;

    fn body(frame: &[u8]) -> &[u8] {
        let header = check(frame, 1024).unwrap().unwrap();
        assert_eq!(header.frame_bytes(), frame.len());
        &frame[FRAME_HEADER_BYTES..]
    }

    #[test]
    fn handshake_frames_round_trip() {
        let mut out = Vec::new();
        encode_hello(&mut out, 7);
        assert_eq!(decode_hello(body(&out)), Ok(7));
        let nonce = [5u8; NONCE_BYTES];
        let mut out = Vec::new();
        encode_challenge(&mut out, &nonce);
        assert_eq!(decode_challenge(body(&out)), Ok(nonce));
        let mac = auth_mac(b"secret", 7, &nonce);
        let mut out = Vec::new();
        encode_auth(&mut out, &mac);
        assert_eq!(decode_auth(body(&out)), Ok(mac));
        let welcome = Welcome {
            frame_bytes_max: 1 << 20,
            batch_ops_max: 8192,
            in_flight_max: 1024,
            rate_per_second: 1000,
            shard_count: 2,
            session: 99,
        };
        let mut out = Vec::new();
        encode_welcome(&mut out, &welcome);
        assert_eq!(decode_welcome(body(&out)), Ok(welcome));
        let mut out = Vec::new();
        encode_error(&mut out, 3, Status::RateLimited, &"é".repeat(200));
        let (status, message) = decode_error(body(&out)).unwrap();
        assert_eq!(status, Status::RateLimited);
        assert_eq!(message.len(), ERROR_MESSAGE_BYTES_MAX);
    }

    #[test]
    fn the_mac_binds_secret_terminal_and_nonce() {
        let nonce = [1u8; NONCE_BYTES];
        let mac = auth_mac(b"secret", 7, &nonce);
        assert!(verify_auth_mac(b"secret", 7, &nonce, &mac));
        assert!(!verify_auth_mac(b"secreT", 7, &nonce, &mac));
        assert!(!verify_auth_mac(b"secret", 8, &nonce, &mac));
        assert!(!verify_auth_mac(b"secret", 7, &[2u8; NONCE_BYTES], &mac));
        let mut flipped = mac;
        flipped[31] ^= 1;
        assert!(!verify_auth_mac(b"secret", 7, &nonce, &flipped));
    }
}
