//! The decoders on arbitrary bytes: whatever a peer sends, checking and decoding never panics
//! and never allocates more than the limits allow (a length field of 4 GiB must not make
//! anyone reserve 4 GiB). A counting global allocator records the largest single allocation
//! made while decoding; proptest drives random and mutated inputs, and fixed hostile inputs
//! run as plain cases.
//!
//! This is the stable, always-run fuzz target; `cargo fuzz` is not needed to run it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ledger_protocol::client::encode_request;
use ledger_protocol::frame::{FRAME_HEADER_BYTES, check};
use ledger_protocol::ops::{Op, RequestView, ResponseView, WriteMeta, decode_response_body};
use ledger_protocol::{Credentials, session};
use proptest::prelude::*;

/// Tracks the largest allocation request of the current thread since the last reset (tests
/// run on several threads at once; each measures only its own decoding).
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; nothing to record then.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: forwards every call to the system allocator unchanged; it only records sizes.
#[expect(unsafe_code, reason = "a test allocator that measures allocation sizes")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract for `realloc` is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Every decoder this crate has, on `bytes`; returns the largest allocation they made.
fn decode_everything(bytes: &[u8]) -> usize {
    LARGEST.with(|largest| largest.set(0));
    let _ = check(bytes, 1 << 20);
    if let Ok(view) = RequestView::parse(bytes, 8192) {
        for raw in view.ops() {
            let _ = Op::decode(raw);
        }
    }
    if let Ok(view) = ResponseView::parse(bytes, 8192) {
        for raw in view.results() {
            let _ = raw.decode();
            let _ = raw.tx_id();
        }
    }
    let _ = decode_response_body(bytes, 16);
    let _ = session::decode_hello(bytes);
    let _ = session::decode_challenge(bytes);
    let _ = session::decode_auth(bytes);
    let _ = session::decode_welcome(bytes);
    let _ = session::decode_error(bytes);
    if let Some(body) = bytes.get(FRAME_HEADER_BYTES..) {
        let _ = RequestView::parse(body, 8192).map(|view| view.ops().count());
    }
    LARGEST.with(Cell::get)
}

/// What decoding may allocate at most: 16 results of the largest kind (a full history) or an
/// error message, never anything proportional to a length field.
const ALLOCATION_MAX: usize = 16 * 256 * 40 + 4096;

fn valid_request() -> Vec<u8> {
    let meta = WriteMeta { key: 5, ..Default::default() };
    let ops = [
        Op::Purchase { meta, customer: 1, amount: 100 },
        Op::History { customer: 1, limit: 256 },
        Op::Transfer { meta, source: 1, destination: 2, points: 3 },
    ];
    let mut frame = Vec::new();
    encode_request(&mut frame, 1, &ops);
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_allocate_unboundedly(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        prop_assert!(decode_everything(&bytes) <= ALLOCATION_MAX);
    }

    #[test]
    fn mutated_valid_frames_never_panic_or_allocate_unboundedly(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut frame = valid_request();
        for (index, byte) in flips {
            let at = index.index(frame.len());
            frame[at] = byte;
        }
        let len = cut.index(frame.len() + 1);
        prop_assert!(decode_everything(&frame[..len]) <= ALLOCATION_MAX);
        prop_assert!(decode_everything(&frame[FRAME_HEADER_BYTES.min(len)..len]) <= ALLOCATION_MAX);
    }

    #[test]
    fn arbitrary_credentials_text_is_refused_or_accepted_without_panic(text in ".{0,400}") {
        let _ = Credentials::parse(&text);
    }
}

#[test]
fn hostile_lengths_allocate_nothing_large() {
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // A frame header claiming 4 GiB.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend([1, 16, 0, 0]);
    huge.extend(1u64.to_le_bytes());
    cases.push(huge);
    // Response bodies claiming 65,535 results and histories claiming 65,535 entries.
    cases.push(vec![0xff, 0xff, 0, 0, 3, 0, 0, 0, 0xff, 0xff]);
    cases.push(vec![1, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0xff, 0xff, 0, 0]);
    // An error frame claiming a 65,535-byte message.
    cases.push(vec![100, 0, 0xff, 0xff]);
    // A request claiming 65,535 operations of 65,535 bytes each.
    cases.push(vec![0xff, 0xff, 0, 0, 16, 0, 0xff, 0xff]);
    for bytes in cases {
        assert!(decode_everything(&bytes) <= 1024, "{bytes:?}");
    }
    // The measurement works: a real history of 200 entries is allocated for.
    let items =
        vec![
            ledger_protocol::HistoryItem { tx_id: 1, timestamp: 2, amount: 3, kind: 1, flags: 1 };
            200
        ];
    let mut body = vec![1, 0, 0, 0];
    let history = ledger_protocol::OpResult::Ok(ledger_protocol::Reply::History(items));
    ledger_protocol::ops::encode_result(&mut body, 3, &history);
    assert!(decode_everything(&body) >= 200 * 28);
}
