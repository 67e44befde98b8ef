//! Golden test vectors: they guard docs/protocol.md against the code, and the code against
//! silent changes of the wire format.
//!
//! Every worked example of the specification is encoded here with the crate's own encoders
//! and compared with a hex constant; the same hex must appear in docs/protocol.md in a fenced
//! block whose info string is `hex golden:<name>`. Each example is also decoded back with the
//! crate's decoders. A change to the bytes on the wire fails here until the specification,
//! and so every client written from it, changes with it. The last tests check that the
//! document names every status, opcode and frame type, with its number, in its tables.

use std::path::Path;

use hmac::{KeyInit, Mac};
use ledger_protocol::frame::{self, FRAME_HEADER_BYTES, FrameType};
use ledger_protocol::ops::{
    self, BalanceView, Basket, BasketLine, Committed, ExplainReply, HistoryItem, Lifecycle,
    LotItem, MemberReply, Op, OpResult, Opcode, PromotionItem, PurchaseRef, Receipt, RefundBy,
    Reply, WriteMeta,
};
use ledger_protocol::session::{self, AUTH_CONTEXT, NONCE_BYTES, Welcome};
use ledger_protocol::status::Status;

/// The terminal of the examples.
const TERMINAL: u32 = 1;
/// The customer of the examples.
const CUSTOMER: u64 = 42;
/// The example secret: the 32 bytes 00, 01, …, 1f.
const SECRET: [u8; 32] = sequence(0x00);
/// The example nonce: the 32 bytes a0, a1, …, bf.
const NONCE: [u8; NONCE_BYTES] = sequence(0xa0);
/// The purchase's transaction id: 2025-06-15T15:06:40Z, shard 1, sequence 5.
const PURCHASE_TX: u64 = 0x02ac_73ba_0000_1005;
/// When the purchase was decided, in ns since the Unix epoch (2025-06-15T15:06:40Z).
const PURCHASE_TIME: u64 = 1_750_000_000_000_000_000;

/// The 32 bytes `first`, `first + 1`, …: easy to recognise in a dump, in the right order.
const fn sequence(first: u8) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let mut index = 0;
    while index < 32 {
        bytes[index] = first + index as u8;
        index += 1;
    }
    bytes
}

/// The golden bytes of each example, by name, as lowercase hex (whitespace is ignored).
const GOLDEN: &[(&str, &str)] = &[
    (
        "lifecycle-request",
        concat!(
            "68000000 01 10 0000 0900000000000000 ",
            "0200 0000 ",
            "18 00 2000 ",
            "09000000000000000000000000000000 07000000 0200 01 05100000ba73ac02 00 ",
            "1a 00 3000 ",
            "0a000000000000000000000000000000 07000000 0200 02 2a00000000000000 02 01 1400 c409000000000000 00 03 522d36 ",
        ),
    ),
    (
        "lifecycle-response",
        concat!(
            "5e000000 01 11 0000 0900000000000000 ",
            "0200 0000 ",
            "18 00 0000 2100 ",
            "051000faba73ac02 00ca89a0ba3f4918 1300000000000000 0000000000000000 00 ",
            "1a 00 0000 2100 ",
            "061000faba73ac02 00ca89a0ba3f4918 1400000000000000 4b00000000000000 00 ",
        ),
    ),
    (
        "state-request",
        concat!(
            "29000000 01 10 0000 0a00000000000000 ",
            "0200 0000 ",
            "06 00 0800 06100000ba73ac02 ",
            "05 00 0900 06100000ba73ac02 01 ",
        ),
    ),
    (
        "state-response",
        concat!(
            "5c010000 01 11 0000 0a00000000000000 ",
            "0200 0000 ",
            "06 00 0000 4800 ",
            "06100000ba73ac02 2a00000000000000 05 01 0000 1e4f0000 ac0d000000000000 8813000000000000 8813000000000000 3200000000000000 1900000000000000 0c00000000000000 ",
            "05 00 0000 f800 ",
            "06100000ba73ac02 0000ef64ba3f4918 1200000000000000 2a00000000000000 07000000 02000000 00603634743c4918 1900000000000000 1900000000000000 0000000000000000 0000000000000000 3200000000000000 1900000000000000 0c00000000000000 01 01 01 02 8813000000000000 0000000000000000 ",
            "06 73696c766572 06 73696c766572 ",
            "00 1900000000000000 06 73756d6d6572 ",
            "1400 c409000000000000 00 2800 e803000000000000 01 ",
            "06100000ba73ac02 2a00000000000000 05 01 0000 1e4f0000 ac0d000000000000 8813000000000000 8813000000000000 3200000000000000 1900000000000000 0c00000000000000 ",
        ),
    ),
    ("hello", "14000000 01 01 0000 0000000000000000 01000000 00000000"),
    (
        "challenge",
        concat!(
            "2c000000 01 02 0000 0000000000000000 ",
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf ",
        ),
    ),
    (
        "auth-message",
        concat!(
            "4c4447522d415554482d31 01000000 ",
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf ",
        ),
    ),
    (
        "auth",
        concat!(
            "2c000000 01 03 0000 0000000000000000 ",
            "7d670e095e50cac4d75714c1cb4ab83c0e53b69ba9e0db6fcd642317fd820edb ",
        ),
    ),
    (
        "welcome",
        concat!(
            "24000000 01 04 0000 0000000000000000 00001000 0020 0010 80841e00 0400 0000 ",
            "0100000000000000 ",
        ),
    ),
    (
        "purchase-request",
        concat!(
            "3e000000 01 10 0000 0100000000000000 0100 0000 10 00 2a00 ",
            "01000000000000000000000000000000 07000000 0200 2a00000000000000 3930000000000000 ",
            "03 522d31 ",
        ),
    ),
    (
        "purchase-response",
        concat!(
            "37000000 01 11 0000 0100000000000000 0100 0000 10 00 0000 2100 05100000ba73ac02 ",
            "0000ef64ba3f4918 1100000000000000 7b00000000000000 00 ",
        ),
    ),
    (
        "history-request",
        concat!(
            "49000000 01 10 0000 0200000000000000 0200 0000 03 00 0a00 2a00000000000000 0a00 ",
            "11 00 2700 02000000000000000000000000000000 07000000 0200 2a00000000000000 ",
            "f401000000000000 00 ",
        ),
    ),
    (
        "history-response",
        concat!(
            "3c000000 01 11 0000 0200000000000000 0200 0000 03 00 0000 2000 0100 0000 ",
            "05100000ba73ac02 0000ef64ba3f4918 7b00000000000000 0100 09 00 11 00 0f00 0000 ",
        ),
    ),
    (
        "balance-request",
        "1c000000 01 10 0000 0300000000000000 0100 0000 02 00 0800 2a00000000000000",
    ),
    (
        "balance-response",
        concat!(
            "2e000000 01 11 0000 0300000000000000 0100 0000 02 00 0000 1800 7b00000000000000 ",
            "6700000000000000 1400000000000000 ",
        ),
    ),
    (
        "basket-request",
        concat!(
            "4d000000 01 10 0000 0600000000000000 0100 0000 17 00 3900 ",
            "06000000000000000000000000000000 07000000 0200 2a00000000000000 02 1400 c409000000000000 ",
            "00 2800 e803000000000000 01 03 522d36 ",
        ),
    ),
    (
        "basket-response",
        concat!(
            "37000000 01 11 0000 0600000000000000 0100 0000 17 00 0000 2100 06100000ba73ac02 ",
            "0000ef64ba3f4918 1200000000000000 4b00000000000000 00 ",
        ),
    ),
    (
        "member-request",
        "1e000000 01 10 0000 0700000000000000 0100 0000 04 00 0a00 2a00000000000000 1e00 ",
    ),
    (
        "member-response",
        concat!(
            "8a000000 01 11 0000 0700000000000000 0100 0000 04 00 0000 7400 01 01 0000 ",
            "9608000000000000 4b00000000000000 c600000000000000 1900000000000000 1400000000000000 ",
            "02000000 0200 0000 06100000ba73ac02 02 00 0000 8c500000 1900000000000000 ",
            "1900000000000000 05100000ba73ac02 01 00 0000 f9510000 ad00000000000000 6700000000000000 ",
        ),
    ),
    (
        "explain-request",
        "1c000000 01 10 0000 0800000000000000 0100 0000 05 00 0800 06100000ba73ac02 ",
    ),
    (
        "explain-response",
        concat!(
            "c6000000 01 11 0000 0800000000000000 0100 0000 05 00 0000 b000 06100000ba73ac02 ",
            "0000ef64ba3f4918 1200000000000000 2a00000000000000 07000000 02000000 00603634743c4918 ",
            "1900000000000000 1900000000000000 0000000000000000 0000000000000000 3200000000000000 ",
            "1900000000000000 0c00000000000000 01 01 01 02 8813000000000000 0000000000000000 ",
            "0673696c766572 0673696c766572 00 1900000000000000 0673756d6d6572 1400 c409000000000000 ",
            "00 2800 e803000000000000 01 ",
        ),
    ),
    (
        "error-request",
        concat!(
            "2f000000 01 7f 0000 0400000000000000 6800 1f00 ",
            "746865207465726d696e616c27732072617465206973206578636565646564 ",
        ),
    ),
    (
        "error-request-id-in-use",
        concat!(
            "34000000 01 7f 0000 0500000000000000 6f00 2400 ",
            "6120726571756573742077697468207468697320696420697320756e616e737765726564 ",
        ),
    ),
    (
        "error-connection",
        concat!(
            "2d000000 01 7f 0000 0000000000000000 6a00 1d00 ",
            "756e6b6e6f776e207465726d696e616c206f722077726f6e67206d6163 ",
        ),
    ),
];

fn meta(key: u128, receipt: &str) -> WriteMeta {
    WriteMeta { key, store: 7, category: 2, receipt: Receipt::new(receipt).unwrap() }
}

fn purchase() -> Op {
    Op::Purchase { meta: meta(1, "R-1"), customer: CUSTOMER, amount: 12_345 }
}

fn purchase_committed() -> Committed {
    Committed {
        tx_id: PURCHASE_TX,
        timestamp: PURCHASE_TIME,
        lsn: 17,
        points: 123,
        duplicate: false,
    }
}

fn history_ops() -> Vec<Op> {
    vec![
        Op::History { customer: CUSTOMER, limit: 10 },
        Op::Redeem { meta: meta(2, ""), customer: CUSTOMER, points: 500 },
    ]
}

fn history_results() -> Vec<(u8, OpResult)> {
    let entry = HistoryItem {
        tx_id: PURCHASE_TX,
        timestamp: PURCHASE_TIME,
        amount: 123,
        kind: 1,
        flags: HistoryItem::CREDIT | HistoryItem::REVERSIBLE,
    };
    vec![
        (Opcode::History as u8, OpResult::Ok(Reply::History(vec![entry]))),
        (Opcode::Redeem as u8, OpResult::Refused(Status::InsufficientFunds)),
    ]
}

fn balance_results() -> Vec<(u8, OpResult)> {
    let view = BalanceView { posted: 123, available: 103, held: 20 };
    vec![(Opcode::Balance as u8, OpResult::Ok(Reply::Balance(view)))]
}

/// The basket purchase of the examples: 25.00 of electronics (category 20) and a 10.00 gift
/// card the till marks excluded.
fn basket_purchase() -> Op {
    let lines = [
        BasketLine { category: 20, amount: 2_500, excluded: false },
        BasketLine { category: 40, amount: 1_000, excluded: true },
    ];
    Op::PurchaseBasket {
        meta: meta(6, "R-6"),
        customer: CUSTOMER,
        basket: Basket::new(&lines).unwrap(),
    }
}

fn basket_committed() -> Committed {
    Committed {
        tx_id: PURCHASE_TX + 1,
        timestamp: PURCHASE_TIME,
        lsn: 18,
        points: 75,
        duplicate: false,
    }
}

fn member_reply() -> MemberReply {
    MemberReply {
        tier: 1,
        tier_recorded: 1,
        qualifying: 2_198,
        day_points: 75,
        month_points: 198,
        expiring: 25,
        held: 20,
        lot_count: 2,
        lots: vec![
            LotItem {
                origin: PURCHASE_TX + 1,
                kind: 2,
                expires_day: 20_620,
                amount: 25,
                remaining: 25,
            },
            LotItem {
                origin: PURCHASE_TX,
                kind: 1,
                expires_day: 20_985,
                amount: 173,
                remaining: 103,
            },
        ],
    }
}

fn explain_reply() -> ExplainReply {
    ExplainReply {
        tx_id: PURCHASE_TX + 1,
        timestamp: PURCHASE_TIME,
        lsn: 18,
        customer: CUSTOMER,
        store: 7,
        rules_version: 2,
        rules_effective_at: PURCHASE_TIME - 3_600_000_000_000,
        base: 25,
        category: 25,
        tier_points: 0,
        cap_cut: 0,
        earned: 50,
        bonus: 25,
        cashback: 12,
        tier_before: (1, "silver".to_string()),
        tier_after: (1, "silver".to_string()),
        daily_cap: 5_000,
        monthly_cap: 0,
        promotions: vec![PromotionItem { index: 0, points: 25, name: "summer".to_string() }],
        lines: match basket_purchase() {
            Op::PurchaseBasket { basket, .. } => basket.lines().to_vec(),
            _ => unreachable!(),
        },
        lifecycle: None,
    }
}

/// The lifecycle operations of the examples: the purchase settled by its id, then 25.00 of
/// electronics returned from the basket purchase, found by its store and receipt.
fn lifecycle_ops() -> Vec<Op> {
    let returned = [BasketLine { category: 20, amount: 2_500, excluded: false }];
    vec![
        Op::Settle { meta: meta(9, ""), purchase: PurchaseRef::Id(PURCHASE_TX) },
        Op::Refund {
            meta: meta(10, "R-6"),
            purchase: PurchaseRef::Receipt { customer: CUSTOMER },
            refund: RefundBy::Lines(Basket::new(&returned).unwrap()),
        },
    ]
}

fn lifecycle_results() -> Vec<(u8, OpResult)> {
    let committed = |tx_id, lsn, points| {
        OpResult::Ok(Reply::Committed(Committed {
            tx_id,
            timestamp: PURCHASE_TIME + 1_000_000_000,
            lsn,
            points,
            duplicate: false,
        }))
    };
    vec![
        (Opcode::Settle as u8, committed(PURCHASE_TX + (1_000 << 22), 19, 0)),
        (Opcode::Refund as u8, committed(PURCHASE_TX + (1_000 << 22) + 1, 20, 75)),
    ]
}

/// The basket purchase's lifecycle after the refund of its electronics: refunded by lines,
/// its whole weight (2,500 × 2) returned.
fn lifecycle() -> Lifecycle {
    Lifecycle {
        tx_id: PURCHASE_TX + 1,
        customer: CUSTOMER,
        state: 5,
        flags: 1,
        day: 20_254,
        spend: 3_500,
        weight: 5_000,
        refunded: 5_000,
        earned: 50,
        bonus: 25,
        cashback: 12,
    }
}

fn state_ops() -> Vec<Op> {
    vec![
        Op::PurchaseState { tx: PURCHASE_TX + 1 },
        Op::Explain { tx: PURCHASE_TX + 1, lifecycle: true },
    ]
}

fn state_results() -> Vec<(u8, OpResult)> {
    let explanation = ExplainReply { lifecycle: Some(lifecycle()), ..explain_reply() };
    vec![
        (Opcode::PurchaseState as u8, OpResult::Ok(Reply::Lifecycle(lifecycle()))),
        (Opcode::Explain as u8, OpResult::Ok(Reply::Explanation(Box::new(explanation)))),
    ]
}

fn welcome() -> Welcome {
    Welcome {
        frame_bytes_max: 1024 * 1024,
        batch_ops_max: 8192,
        in_flight_max: 4096,
        rate_per_second: 2_000_000,
        shard_count: 4,
        session: 1,
    }
}

/// A request frame, built from the frame and body encoders; with the `client` feature, the
/// client's `encode_request` must build the same bytes.
fn request(request_id: u64, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = frame::begin_frame(&mut out, FrameType::Request, request_id);
    ops::encode_request_body(ops, &mut out);
    frame::finish_frame(&mut out, start);
    #[cfg(feature = "client")]
    {
        let mut client = Vec::new();
        ledger_protocol::client::encode_request(&mut client, request_id, ops);
        assert_eq!(client, out, "client::encode_request differs from the frame encoders");
    }
    out
}

/// A response frame, as the server builds it: the count header, then each result.
fn response(request_id: u64, results: &[(u8, OpResult)]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = frame::begin_frame(&mut out, FrameType::Response, request_id);
    ops::put_count_header(&mut out, results.len());
    for (opcode, result) in results {
        ops::encode_result(&mut out, *opcode, result);
    }
    frame::finish_frame(&mut out, start);
    out
}

/// The message the MAC covers: the context, the terminal id, the nonce.
fn auth_message() -> Vec<u8> {
    let mut message = AUTH_CONTEXT.to_vec();
    message.extend_from_slice(&TERMINAL.to_le_bytes());
    message.extend_from_slice(&NONCE);
    message
}

/// Every example, encoded by the code under test.
fn encode(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match name {
        "hello" => session::encode_hello(&mut out, TERMINAL),
        "challenge" => session::encode_challenge(&mut out, &NONCE),
        "auth-message" => out = auth_message(),
        "auth" => session::encode_auth(&mut out, &session::auth_mac(&SECRET, TERMINAL, &NONCE)),
        "welcome" => session::encode_welcome(&mut out, &welcome()),
        "purchase-request" => out = request(1, &[purchase()]),
        "purchase-response" => {
            let result = OpResult::Ok(Reply::Committed(purchase_committed()));
            out = response(1, &[(Opcode::Purchase as u8, result)]);
        }
        "history-request" => out = request(2, &history_ops()),
        "history-response" => out = response(2, &history_results()),
        "balance-request" => out = request(3, &[Op::Balance { customer: CUSTOMER }]),
        "balance-response" => out = response(3, &balance_results()),
        "error-request" => session::encode_error(
            &mut out,
            4,
            Status::RateLimited,
            "the terminal's rate is exceeded",
        ),
        "error-request-id-in-use" => session::encode_error(
            &mut out,
            5,
            Status::RequestIdInUse,
            "a request with this id is unanswered",
        ),
        "basket-request" => out = request(6, &[basket_purchase()]),
        "basket-response" => {
            let result = OpResult::Ok(Reply::Committed(basket_committed()));
            out = response(6, &[(Opcode::PurchaseBasket as u8, result)]);
        }
        "member-request" => out = request(7, &[Op::Member { customer: CUSTOMER, within_days: 30 }]),
        "member-response" => {
            out =
                response(7, &[(Opcode::Member as u8, OpResult::Ok(Reply::Member(member_reply())))]);
        }
        "explain-request" => {
            out = request(8, &[Op::Explain { tx: PURCHASE_TX + 1, lifecycle: false }])
        }
        "explain-response" => {
            let result = OpResult::Ok(Reply::Explanation(Box::new(explain_reply())));
            out = response(8, &[(Opcode::Explain as u8, result)]);
        }
        "error-connection" => {
            session::encode_error(&mut out, 0, Status::AuthFailed, "unknown terminal or wrong mac")
        }
        "lifecycle-request" => out = request(9, &lifecycle_ops()),
        "lifecycle-response" => out = response(9, &lifecycle_results()),
        "state-request" => out = request(10, &state_ops()),
        "state-response" => out = response(10, &state_results()),
        other => panic!("no example named {other}"),
    }
    out
}

/// Lowercase hex, no separators.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The text without whitespace, in lowercase: hex digits as they compare.
fn squeeze(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase()
}

/// The bytes of the golden constant `name`.
fn golden(name: &str) -> Vec<u8> {
    let (_, text) = GOLDEN.iter().find(|(known, _)| *known == name).unwrap();
    let digits = squeeze(text);
    (0..digits.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&digits[at..at + 2], 16).unwrap())
        .collect()
}

/// The header and body of a golden frame, checked by `frame::check`.
fn split(name: &str) -> (frame::FrameHeader, Vec<u8>) {
    let bytes = golden(name);
    let header = frame::check(&bytes, 1024 * 1024).unwrap().unwrap();
    assert_eq!(header.frame_bytes(), bytes.len(), "{name} is one whole frame");
    (header, bytes[FRAME_HEADER_BYTES..].to_vec())
}

/// The text of docs/protocol.md.
fn spec() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The golden blocks of the specification: name and hex digits. In a block, `#` starts a
/// comment that runs to the end of its line; everything else must be hex digits and spaces.
fn spec_blocks(spec: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for (number, line) in spec.lines().enumerate() {
        let trimmed = line.trim();
        match open.take() {
            None => {
                if let Some(name) = trimmed.strip_prefix("```hex golden:") {
                    open = Some((name.trim().to_string(), String::new()));
                }
            }
            Some((name, digits)) if trimmed.starts_with("```") => blocks.push((name, digits)),
            Some((name, mut digits)) => {
                let data = line.split('#').next().unwrap_or("");
                let data = squeeze(data);
                assert!(
                    data.chars().all(|c| c.is_ascii_hexdigit()),
                    "docs/protocol.md line {}: not hex in golden block {name}: {line:?}",
                    number + 1
                );
                digits.push_str(&data);
                open = Some((name, digits));
            }
        }
    }
    assert!(open.is_none(), "docs/protocol.md: a golden block is not closed");
    blocks
}

#[test]
fn every_example_encodes_to_its_golden_bytes() {
    let mut wrong = Vec::new();
    for (name, text) in GOLDEN {
        let actual = hex(&encode(name));
        if actual != squeeze(text) {
            wrong.push(format!("{name}: the code encodes\n{actual}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_specification_shows_every_golden_example() {
    let blocks = spec_blocks(&spec());
    for (name, text) in GOLDEN {
        let shown: Vec<&String> =
            blocks.iter().filter(|(block, _)| block == name).map(|(_, digits)| digits).collect();
        assert_eq!(shown.len(), 1, "docs/protocol.md must show `hex golden:{name}` once");
        assert_eq!(*shown[0], squeeze(text), "docs/protocol.md shows other bytes for {name}");
    }
    for (name, _) in &blocks {
        assert!(
            GOLDEN.iter().any(|(known, _)| known == name),
            "docs/protocol.md has a golden block {name} that no test checks"
        );
    }
}

#[test]
fn the_golden_bytes_decode_to_the_examples() {
    let (header, body) = split("hello");
    assert_eq!((header.frame_type, header.request_id), (FrameType::Hello, 0));
    assert_eq!(session::decode_hello(&body), Ok(TERMINAL));

    let (header, body) = split("challenge");
    assert_eq!(header.frame_type, FrameType::Challenge);
    assert_eq!(session::decode_challenge(&body), Ok(NONCE));

    // The MAC is plain HMAC-SHA256 of the message shown, keyed with the secret's bytes.
    let message = golden("auth-message");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&SECRET).unwrap();
    mac.update(&message);
    let expected: [u8; 32] = mac.finalize().into_bytes().into();
    let (header, body) = split("auth");
    assert_eq!(header.frame_type, FrameType::Auth);
    assert_eq!(session::decode_auth(&body), Ok(expected));
    assert!(session::verify_auth_mac(&SECRET, TERMINAL, &NONCE, &expected));

    let (header, body) = split("welcome");
    assert_eq!(header.frame_type, FrameType::Welcome);
    assert_eq!(session::decode_welcome(&body), Ok(welcome()));

    let requests = [
        ("purchase-request", 1, vec![purchase()]),
        ("history-request", 2, history_ops()),
        ("balance-request", 3, vec![Op::Balance { customer: CUSTOMER }]),
        ("basket-request", 6, vec![basket_purchase()]),
        ("member-request", 7, vec![Op::Member { customer: CUSTOMER, within_days: 30 }]),
        ("explain-request", 8, vec![Op::Explain { tx: PURCHASE_TX + 1, lifecycle: false }]),
        ("lifecycle-request", 9, lifecycle_ops()),
        ("state-request", 10, state_ops()),
    ];
    for (name, request_id, expected) in requests {
        let (header, body) = split(name);
        assert_eq!((header.frame_type, header.request_id), (FrameType::Request, request_id));
        let view = ops::RequestView::parse(&body, 8192).unwrap();
        let decoded: Vec<Op> = view.ops().map(|raw| Op::decode(raw).unwrap()).collect();
        assert_eq!(decoded, expected, "{name}");
    }

    let committed = OpResult::Ok(Reply::Committed(purchase_committed()));
    let responses = [
        ("purchase-response", 1, vec![(Opcode::Purchase as u8, committed)]),
        ("history-response", 2, history_results()),
        ("balance-response", 3, balance_results()),
        (
            "basket-response",
            6,
            vec![(
                Opcode::PurchaseBasket as u8,
                OpResult::Ok(Reply::Committed(basket_committed())),
            )],
        ),
        (
            "member-response",
            7,
            vec![(Opcode::Member as u8, OpResult::Ok(Reply::Member(member_reply())))],
        ),
        (
            "explain-response",
            8,
            vec![(
                Opcode::Explain as u8,
                OpResult::Ok(Reply::Explanation(Box::new(explain_reply()))),
            )],
        ),
        ("lifecycle-response", 9, lifecycle_results()),
        ("state-response", 10, state_results()),
    ];
    for (name, request_id, expected) in responses {
        let (header, body) = split(name);
        assert_eq!((header.frame_type, header.request_id), (FrameType::Response, request_id));
        assert_eq!(ops::decode_response_body(&body, expected.len()).unwrap(), expected, "{name}");
    }

    let errors = [
        ("error-request", 4, Status::RateLimited, "the terminal's rate is exceeded"),
        ("error-connection", 0, Status::AuthFailed, "unknown terminal or wrong mac"),
        (
            "error-request-id-in-use",
            5,
            Status::RequestIdInUse,
            "a request with this id is unanswered",
        ),
    ];
    for (name, request_id, status, message) in errors {
        let (header, body) = split(name);
        assert_eq!((header.frame_type, header.request_id), (FrameType::Error, request_id));
        assert_eq!(session::decode_error(&body).unwrap(), (status, message.to_string()));
    }
}

#[test]
fn the_specification_names_every_status_with_its_number() {
    let spec = spec();
    for status in Status::ALL {
        let name = format!("`{}`", status.name());
        assert!(spec.contains(&name), "docs/protocol.md does not name {name}");
        let row = format!("| {} | {name} |", status.code());
        assert!(spec.contains(&row), "docs/protocol.md has no status table row {row:?}");
    }
}

#[test]
fn the_specification_names_every_opcode_and_frame_type_with_its_number() {
    let spec = spec();
    for opcode in Opcode::ALL {
        let row = format!("| {} | `{}` |", *opcode as u8, opcode.name());
        assert!(spec.contains(&row), "docs/protocol.md has no opcode table row {row:?}");
    }
    for number in 0..=u8::MAX {
        if let Some(frame_type) = FrameType::from_u8(number) {
            let row = format!("| {number} | `{frame_type:?}` |");
            assert!(spec.contains(&row), "docs/protocol.md has no frame type table row {row:?}");
        }
    }
}
