//! The loyalty programme over the POS protocol, end to end over real sockets: the documented
//! example rule file (docs/loyalty.md, "Rule files") recorded as the server's rules, time a
//! manual clock on Black Friday 2026. Basket purchases earn what the engine's pricing gives the
//! same rules; `member` shows the tier, lots and cap counters they leave; `explain` names every
//! component; a one-line `purchase` and a one-line `purchase_basket` are the same write; refused
//! baskets change nothing.

mod common;

use std::sync::Arc;

use common::{RawReader, Received, TestServer, raw};
use ledger_engine::Timestamp;
use ledger_engine::clock::{Clock, ManualClock};
use ledger_engine::loyalty::calendar::{self, Date};
use ledger_engine::loyalty::pricing::{Breakdown, CapsUsed, Line, price};
use ledger_engine::loyalty::rules_file::{RulesFile, parse_timestamp};
use ledger_protocol::client::Client;
use ledger_protocol::frame::{FrameType, put_header};
use ledger_protocol::ops::{
    Basket, BasketLine, Committed, ExplainReply, LotItem, MemberReply, Op, OpResult, PromotionItem,
    Reply, WriteMeta,
};
use ledger_protocol::{Receipt, Status};
use tokio::io::AsyncWriteExt;

/// 2026-11-27T10:00:00Z: Black Friday runs all that UTC day; the flagship opening (store 7)
/// from 2026-11-20T08:00Z to 2026-11-30T23:00Z.
fn black_friday() -> Timestamp {
    parse_timestamp("2026-11-27T10:00:00Z").unwrap()
}

const LOT_EARNED: u8 = 1;
const LOT_BONUS: u8 = 2;

/// A server with the documented example rules as version 1, its clock at `at`.
async fn server_at(at: Timestamp) -> (TestServer, Arc<ManualClock>, RulesFile) {
    let file = common::example_rules();
    let clock = Arc::new(ManualClock::new(at));
    let shared: Arc<dyn Clock> = Arc::clone(&clock) as Arc<dyn Clock>;
    let server = TestServer::start_with_rules(common::pos_config(), shared, &file).await;
    (server, clock, file)
}

fn meta(key: u128, store: u32) -> WriteMeta {
    WriteMeta { key, store, category: 0, receipt: Receipt::new("BF-1").unwrap() }
}

fn line(category: u16, amount: u64, excluded: bool) -> BasketLine {
    BasketLine { category, amount, excluded }
}

fn basket(meta: WriteMeta, customer: u64, lines: &[BasketLine]) -> Op {
    Op::PurchaseBasket { meta, customer, basket: Basket::new(lines).unwrap() }
}

/// What the engine's pricing gives `lines` under `file`'s rules.
fn priced(
    file: &RulesFile,
    lines: &[BasketLine],
    store: u32,
    at: Timestamp,
    tier: u8,
    used: (u64, u64),
) -> Breakdown {
    let lines: Vec<Line> = lines
        .iter()
        .map(|line| Line { category: line.category, amount: line.amount, excluded: line.excluded })
        .collect();
    price(&file.rules, &lines, store, at, tier, CapsUsed { day: used.0, month: used.1 }).unwrap()
}

fn committed(result: &OpResult) -> Committed {
    *result.committed().unwrap_or_else(|| panic!("not committed: {result:?}"))
}

async fn balance(client: &Client, customer: u64) -> Option<i64> {
    match client.call_one(Op::Balance { customer }).await.unwrap() {
        OpResult::Ok(Reply::Balance(view)) => {
            assert_eq!(view.held, 0);
            assert_eq!(view.available, view.posted);
            Some(view.posted)
        }
        OpResult::Refused(Status::AccountNotFound) => None,
        other => panic!("{other:?}"),
    }
}

async fn member(client: &Client, customer: u64, within_days: u16) -> MemberReply {
    match client.call_one(Op::Member { customer, within_days }).await.unwrap() {
        OpResult::Ok(Reply::Member(member)) => member,
        other => panic!("{other:?}"),
    }
}

async fn explain(client: &Client, tx: u64) -> ExplainReply {
    match client.call_one(Op::Explain { tx, lifecycle: false }).await.unwrap() {
        OpResult::Ok(Reply::Explanation(explanation)) => *explanation,
        other => panic!("{other:?}"),
    }
}

/// A date as the day index a lot's `expires_day` holds (it expires at 00:00 UTC of that day).
fn expiry_day(year: u32, month: u32, day: u32) -> u32 {
    u32::try_from(calendar::days_from_civil(Date { year, month, day })).unwrap()
}

/// Three baskets by one member on Black Friday. The first is worked example 2 of
/// docs/loyalty.md plus a gift card (category 40, excluded by the rules), bought by a bronze
/// member at the flagship store: the same components but no gold tier points. The second
/// crosses silver's threshold; the third is priced at silver. Balance, member and explain
/// over the socket agree with the engine's pricing and the documented numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_friday_baskets_earn_what_the_rules_give_and_member_and_explain_show_it() {
    let at = black_friday();
    let (server, _clock, file) = server_at(at).await;
    let client = server.client().await;
    let customer = 501;
    assert_eq!(
        client.call_one(Op::Member { customer, within_days: 0 }).await.unwrap(),
        OpResult::Refused(Status::AccountNotFound),
        "no loyalty state before the first credit"
    );

    // 1. At the flagship store (7), as bronze: 245.49 eligible; the grocery line is flagged
    // by the till and the gift card excluded by its category.
    let lines1 = [
        line(20, 19_999, false),
        line(30, 4_550, false),
        line(10, 800, true),
        line(40, 2_500, false),
    ];
    let expected1 = priced(&file, &lines1, 7, at, 0, (0, 0));
    // Worked example 2 without gold's 122: base 245, category 290, Black Friday 245, flagship
    // 250, cashback 99 + beauty's flat 100.
    assert_eq!(
        (expected1.base, expected1.category, expected1.tier_points, expected1.cap_cut),
        (245, 290, 0, 0)
    );
    assert_eq!((expected1.earned, expected1.bonus, expected1.cashback), (535, 495, 199));
    let first = committed(&client.call_one(basket(meta(1, 7), customer, &lines1)).await.unwrap());
    assert_eq!(first.points, expected1.points());
    assert_eq!(first.points, 1_030);
    assert!(!first.duplicate);
    assert_eq!(first.timestamp, at.0, "the shard stamps the record with the manual clock");
    assert_eq!(balance(&client, customer).await, Some(1_030));

    // 2. Store 1 (no flagship bonus), still priced at bronze: 1,500 points take the member's
    // qualifying points to 2,530, past silver's 2,000.
    let lines2 = [line(20, 50_000, false)];
    let expected2 = priced(&file, &lines2, 1, at, 0, (1_030, 1_030));
    assert_eq!((expected2.base, expected2.category, expected2.tier_points), (500, 500, 0));
    assert_eq!((expected2.earned, expected2.bonus), (1_000, 500));
    let second = committed(&client.call_one(basket(meta(2, 1), customer, &lines2)).await.unwrap());
    assert_eq!(second.points, 1_500);
    assert_eq!(balance(&client, customer).await, Some(2_530));

    // 3. Priced at silver (1.25×): ⌊1000 × 0.25 / 100⌋ = 2 tier points.
    let lines3 = [line(10, 1_000, false)];
    let expected3 = priced(&file, &lines3, 1, at, 1, (2_530, 2_530));
    assert_eq!((expected3.base, expected3.category, expected3.tier_points), (10, 0, 2));
    assert_eq!((expected3.earned, expected3.bonus), (12, 10));
    let third = committed(&client.call_one(basket(meta(3, 1), customer, &lines3)).await.unwrap());
    assert_eq!(third.points, 22);
    let total = 1_030 + 1_500 + 22;
    assert_eq!(balance(&client, customer).await, Some(total));

    // Member: silver now and as recorded; every point qualifies and counts for today's and
    // this month's caps; one earned lot and one bonus lot (one lot per kind and day), opened
    // by the first purchase, the bonus lot (12 months) expiring first.
    let today = calendar::day_index(at);
    let bonus_day = expiry_day(2027, 11, 28);
    let earned_day = expiry_day(2028, 11, 28);
    assert_eq!(bonus_day, calendar::day_index(calendar::expiry_after(at, 12)));
    assert_eq!(earned_day, calendar::day_index(calendar::expiry_after(at, 24)));
    assert_eq!((bonus_day - today, earned_day - today), (366, 732));
    let bonus = expected1.bonus + expected2.bonus + expected3.bonus;
    let earned = expected1.earned + expected2.earned + expected3.earned;
    assert_eq!((earned, bonus), (1_547, 1_005));
    let view = member(&client, customer, 0).await;
    assert_eq!(
        view,
        MemberReply {
            tier: 1,
            tier_recorded: 1,
            qualifying: 2_552,
            day_points: 2_552,
            month_points: 2_552,
            expiring: 0,
            held: 0,
            lot_count: 2,
            lots: vec![
                LotItem {
                    origin: first.tx_id,
                    kind: LOT_BONUS,
                    expires_day: bonus_day,
                    amount: bonus,
                    remaining: bonus,
                },
                LotItem {
                    origin: first.tx_id,
                    kind: LOT_EARNED,
                    expires_day: earned_day,
                    amount: earned,
                    remaining: earned,
                },
            ],
        }
    );
    // `expiring` counts the lots that expire by 00:00 UTC of today + within_days + 1
    // (docs/protocol.md, `member`): the bonus lot's midnight is today + 366.
    assert_eq!(member(&client, customer, 364).await.expiring, 0);
    assert_eq!(member(&client, customer, 365).await.expiring, bonus);
    assert_eq!(member(&client, customer, 730).await.expiring, bonus);
    assert_eq!(member(&client, customer, 731).await.expiring, bonus + earned);

    // Explain, from the shard's memory: version 1, the tiers by name, every component, both
    // promotions by name, the basket as sent.
    let rules_effective_at = at.0;
    assert_eq!(
        explain(&client, first.tx_id).await,
        ExplainReply {
            tx_id: first.tx_id,
            timestamp: first.timestamp,
            lsn: first.lsn,
            customer,
            store: 7,
            rules_version: 1,
            rules_effective_at,
            base: 245,
            category: 290,
            tier_points: 0,
            cap_cut: 0,
            earned: 535,
            bonus: 495,
            cashback: 199,
            tier_before: (0, "bronze".into()),
            tier_after: (0, "bronze".into()),
            daily_cap: 5_000,
            monthly_cap: 20_000,
            promotions: vec![
                PromotionItem { index: 0, points: 245, name: "black-friday".into() },
                PromotionItem { index: 1, points: 250, name: "flagship-opening".into() },
            ],
            lines: lines1.to_vec(),
            lifecycle: None,
        }
    );
    let explained = explain(&client, second.tx_id).await;
    assert_eq!(
        (explained.tier_before, explained.tier_after),
        ((0, "bronze".into()), (1, "silver".into()))
    );
    assert_eq!(
        explained.promotions,
        vec![PromotionItem { index: 0, points: 500, name: "black-friday".into() }]
    );
    assert_eq!((explained.store, explained.lines), (1, lines2.to_vec()));
    let explained = explain(&client, third.tx_id).await;
    assert_eq!(
        (explained.tier_before.1.as_str(), explained.tier_after.1.as_str()),
        ("silver", "silver")
    );
    assert_eq!(
        (explained.base, explained.category, explained.tier_points, explained.earned),
        (10, 0, 2, 12)
    );
    // Each explanation adds up: base + category + tier + promotions = earned + bonus + cut.
    for tx in [first.tx_id, second.tx_id, third.tx_id] {
        let e = explain(&client, tx).await;
        let promotions: u64 = e.promotions.iter().map(|p| p.points).sum();
        assert_eq!(
            e.base + e.category + e.tier_points + promotions,
            e.earned + e.bonus + e.cap_cut
        );
        assert_eq!((e.rules_version, e.customer), (1, customer));
    }

    // Anything but a purchase the shard holds is transaction_not_found: an unknown id, and a
    // redemption's.
    let unknown = client.call_one(Op::Explain { tx: 12_345, lifecycle: false }).await.unwrap();
    assert_eq!(unknown, OpResult::Refused(Status::TransactionNotFound));
    let redeem = Op::Redeem { meta: meta(4, 1), customer, points: 52 };
    let redeem = committed(&client.call_one(redeem).await.unwrap());
    let not_a_purchase =
        client.call_one(Op::Explain { tx: redeem.tx_id, lifecycle: false }).await.unwrap();
    assert_eq!(not_a_purchase, OpResult::Refused(Status::TransactionNotFound));
    // The redemption spent the lot that expires first.
    let view = member(&client, customer, 0).await;
    let left: Vec<(u8, u64)> = view.lots.iter().map(|lot| (lot.kind, lot.remaining)).collect();
    assert_eq!(left, vec![(LOT_BONUS, bonus - 52), (LOT_EARNED, earned)]);
    assert_eq!(view.qualifying, 2_552, "spending does not take qualifying points back");
    assert_eq!(balance(&client, customer).await, Some(2_500));
    drop(client);
    server.stop().await;
}

/// The caps over the socket: a basket beyond the daily room is cut, bonus points first; a
/// basket with no room left is recorded and answered ok with 0 points; the next UTC day has
/// its own room (the month's counter goes on), and Black Friday is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_cap_cuts_bonus_first_and_the_next_day_has_room_again() {
    let at = black_friday();
    let (server, clock, file) = server_at(at).await;
    let client = server.client().await;
    let customer = 801;

    // 2,000 base + 2,000 electronics + 2,000 Black Friday = 6,000 against a daily cap of 5,000.
    let big = [line(20, 200_000, false)];
    let expected = priced(&file, &big, 1, at, 0, (0, 0));
    assert_eq!((expected.cap_cut, expected.earned, expected.bonus), (1_000, 4_000, 1_000));
    let capped = committed(&client.call_one(basket(meta(1, 1), customer, &big)).await.unwrap());
    assert_eq!(capped.points, 5_000);
    let e = explain(&client, capped.tx_id).await;
    assert_eq!((e.base, e.category, e.tier_points), (2_000, 2_000, 0));
    assert_eq!((e.cap_cut, e.earned, e.bonus), (1_000, 4_000, 1_000));
    assert_eq!(
        e.promotions,
        vec![PromotionItem { index: 0, points: 2_000, name: "black-friday".into() }]
    );

    // No room left today: recorded all the same, with its own id, and 0 points. The member is
    // silver now (5,000 qualifying points), so the basket is priced at silver and all of its
    // 10 base + 2 tier + 10 Black Friday points are cut.
    let small = [line(10, 1_000, false)];
    let expected = priced(&file, &small, 1, at, 1, (5_000, 5_000));
    assert_eq!((expected.cap_cut, expected.points()), (22, 0));
    let nothing = committed(&client.call_one(basket(meta(2, 1), customer, &small)).await.unwrap());
    assert_eq!((nothing.points, nothing.duplicate), (0, false));
    assert_ne!(nothing.tx_id, capped.tx_id);
    let e = explain(&client, nothing.tx_id).await;
    assert_eq!((e.base, e.tier_points, e.bonus, e.earned, e.cap_cut), (10, 2, 0, 0, 22));
    assert_eq!((e.tier_before.1.as_str(), e.tier_after.1.as_str()), ("silver", "silver"));
    let view = member(&client, customer, 0).await;
    assert_eq!((view.day_points, view.month_points, view.qualifying), (5_000, 5_000, 5_000));
    assert_eq!(balance(&client, customer).await, Some(5_000));

    // The next UTC day: silver (5,000 qualifying points), no Black Friday, a new daily room.
    let next_day = parse_timestamp("2026-11-28T10:00:00Z").unwrap();
    clock.set(next_day);
    let expected = priced(&file, &small, 1, next_day, 1, (0, 5_000));
    assert_eq!((expected.base, expected.tier_points, expected.bonus), (10, 2, 0));
    let next = committed(&client.call_one(basket(meta(3, 1), customer, &small)).await.unwrap());
    assert_eq!(next.points, expected.points());
    assert_eq!(next.points, 12);
    let view = member(&client, customer, 0).await;
    assert_eq!((view.tier, view.day_points, view.month_points), (1, 12, 5_012));
    // A lot per kind and day: the bonus and earned lots of Friday, the earned lot of Saturday.
    let lots: Vec<(u8, u32, u64)> =
        view.lots.iter().map(|lot| (lot.kind, lot.expires_day, lot.remaining)).collect();
    assert_eq!(
        lots,
        vec![
            (LOT_BONUS, expiry_day(2027, 11, 28), 1_000),
            (LOT_EARNED, expiry_day(2028, 11, 28), 4_000),
            (LOT_EARNED, expiry_day(2028, 11, 29), 12),
        ]
    );
    assert_eq!(balance(&client, customer).await, Some(5_012));
    drop(client);
    server.stop().await;
}

/// A `purchase` (opcode 16) and a `purchase_basket` of the same single line, with the same key,
/// store, category and receipt, are one write: the second is answered as a duplicate with the
/// first's answer, whichever comes first. The same key with anything else in the line is
/// `idempotency_conflict`. Neither posts anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_line_purchase_and_a_one_line_basket_are_the_same_write() {
    let at = black_friday();
    let (server, _clock, file) = server_at(at).await;
    let client = server.client().await;
    let customer = 601;
    let write =
        |key| WriteMeta { key, store: 3, category: 20, receipt: Receipt::new("R-9").unwrap() };
    let one = [line(20, 2_500, false)];
    // 25 base + 25 electronics + 25 Black Friday (store 3: no flagship bonus).
    let expected = priced(&file, &one, 3, at, 0, (0, 0)).points();
    assert_eq!(expected, 75);

    // purchase first, then the basket.
    let purchase = Op::Purchase { meta: write(77), customer, amount: 2_500 };
    let original = committed(&client.call_one(purchase).await.unwrap());
    assert_eq!((original.points, original.duplicate), (75, false));
    let retry = committed(&client.call_one(basket(write(77), customer, &one)).await.unwrap());
    assert!(retry.duplicate, "{retry:?}");
    assert_eq!(
        (retry.tx_id, retry.timestamp, retry.lsn, retry.points),
        (original.tx_id, original.timestamp, original.lsn, original.points)
    );
    // The basket first, then the purchase.
    let first = committed(&client.call_one(basket(write(78), customer, &one)).await.unwrap());
    assert!(!first.duplicate);
    let purchase = Op::Purchase { meta: write(78), customer, amount: 2_500 };
    let again = committed(&client.call_one(purchase).await.unwrap());
    assert!(again.duplicate);
    assert_eq!((again.tx_id, again.points), (first.tx_id, 75));
    assert_eq!(balance(&client, customer).await, Some(150));

    // The same key with another write: another amount (either opcode), another flag, another
    // line added, another store.
    let conflicts = [
        basket(write(77), customer, &[line(20, 2_600, false)]),
        Op::Purchase { meta: write(77), customer, amount: 2_600 },
        basket(write(77), customer, &[line(20, 2_500, true)]),
        basket(write(77), customer, &[line(20, 2_500, false), line(10, 100, false)]),
        basket(WriteMeta { store: 7, ..write(77) }, customer, &one),
    ];
    for op in conflicts {
        assert_eq!(
            client.call_one(op).await.unwrap(),
            OpResult::Refused(Status::IdempotencyConflict),
            "{op:?}"
        );
    }
    assert_eq!(balance(&client, customer).await, Some(150));

    // The purchase's explanation shows it as a basket of its one line.
    let e = explain(&client, original.tx_id).await;
    assert_eq!((e.store, e.lines), (3, one.to_vec()));
    assert_eq!((e.base, e.category, e.earned, e.bonus), (25, 25, 50, 25));
    let view = member(&client, customer, 0).await;
    assert_eq!((view.day_points, view.qualifying), (150, 150));
    drop(client);
    server.stop().await;
}

/// The bytes of a `purchase_basket` operation (header and body) with `count` in its line-count
/// field and these lines (category, amount, flags byte), whatever they say.
fn raw_basket_op(key: u128, customer: u64, count: u8, lines: &[(u16, u64, u8)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(key.to_le_bytes());
    body.extend(1u32.to_le_bytes()); // store
    body.extend(0u16.to_le_bytes()); // category
    body.extend(customer.to_le_bytes());
    body.push(count);
    for (category, amount, flags) in lines {
        body.extend(category.to_le_bytes());
        body.extend(amount.to_le_bytes());
        body.push(*flags);
    }
    body.push(0); // receipt_len
    let mut op = vec![ledger_protocol::Opcode::PurchaseBasket as u8, 0];
    op.extend(u16::try_from(body.len()).unwrap().to_le_bytes());
    op.extend(body);
    op
}

/// A request frame of these raw operations.
fn raw_request(id: u64, ops: &[Vec<u8>]) -> Vec<u8> {
    let ops_bytes: usize = ops.iter().map(Vec::len).sum();
    let mut frame = Vec::new();
    put_header(&mut frame, FrameType::Request, id, 4 + ops_bytes);
    frame.extend(u16::try_from(ops.len()).unwrap().to_le_bytes());
    frame.extend([0, 0]);
    for op in ops {
        frame.extend(op);
    }
    frame
}

/// Refused baskets write nothing: an empty basket and one of 33 lines are `basket_invalid`, a
/// line of 0 (in a basket or a one-line purchase) `line_amount_zero`, a line flag other than
/// bit 0 `malformed`. The balance, the member's counters and lots and the history are what they
/// were, and a refused key is not used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_baskets_change_nothing() {
    let at = black_friday();
    let (server, _clock, _file) = server_at(at).await;
    let client = server.client().await;
    let customer = 701;
    let before = committed(
        &client.call_one(basket(meta(1, 1), customer, &[line(10, 1_000, false)])).await.unwrap(),
    );
    assert_eq!(before.points, 20); // 10 base + 10 Black Friday
    let member_before = member(&client, customer, 731).await;
    let history = |client: &Client| {
        let client = client.clone();
        async move {
            match client.call_one(Op::History { customer, limit: 10 }).await.unwrap() {
                OpResult::Ok(Reply::History(items)) => items,
                other => panic!("{other:?}"),
            }
        }
    };
    let history_before = history(&client).await;
    assert_eq!(history_before.len(), 1);

    // What the client can build: an empty basket, a line of 0, a one-line purchase of 0.
    let empty = client.call_one(basket(meta(2, 1), customer, &[])).await.unwrap();
    assert_eq!(empty, OpResult::Refused(Status::BasketInvalid));
    let zero_line = basket(meta(3, 1), customer, &[line(10, 1_000, false), line(20, 0, false)]);
    assert_eq!(
        client.call_one(zero_line).await.unwrap(),
        OpResult::Refused(Status::LineAmountZero)
    );
    let zero_purchase = Op::Purchase { meta: meta(4, 1), customer, amount: 0 };
    assert_eq!(
        client.call_one(zero_purchase).await.unwrap(),
        OpResult::Refused(Status::LineAmountZero)
    );
    // The client cannot build 33 lines; the server refuses them as sent, beside a good ping.
    assert_eq!(Basket::new(&[line(10, 1, false); 33]), Err(Status::BasketInvalid));
    let mut stream = raw(&server).await;
    let lines33 = vec![(10u16, 1_000u64, 0u8); 33];
    let bad_flag = [(10u16, 1_000u64, 2u8)];
    let ping = vec![ledger_protocol::Opcode::Ping as u8, 0, 0, 0];
    let frame = raw_request(
        9,
        &[
            raw_basket_op(5, customer, 33, &lines33),
            raw_basket_op(6, customer, 0, &[]),
            raw_basket_op(7, customer, 1, &bad_flag),
            ping,
        ],
    );
    stream.write_all(&frame).await.unwrap();
    match RawReader::default().next(&mut stream).await {
        Received::Response(9, results) => assert_eq!(
            results,
            vec![
                OpResult::Refused(Status::BasketInvalid),
                OpResult::Refused(Status::BasketInvalid),
                OpResult::Refused(Status::Malformed),
                OpResult::Ok(Reply::Pong),
            ]
        ),
        other => panic!("{other:?}"),
    }
    drop(stream);

    assert_eq!(balance(&client, customer).await, Some(20));
    assert_eq!(member(&client, customer, 731).await, member_before);
    assert_eq!(history(&client).await, history_before);
    // Nothing was recorded under the refused keys: key 3 is free for a good basket.
    let good = basket(meta(3, 1), customer, &[line(10, 1_000, false), line(20, 500, false)]);
    let good = committed(&client.call_one(good).await.unwrap());
    assert!(!good.duplicate);
    assert_ne!(good.tx_id, before.tx_id);
    // 15 base + 5 electronics + 15 Black Friday.
    assert_eq!(good.points, 35);
    assert_eq!(balance(&client, customer).await, Some(55));
    drop(client);
    server.stop().await;
}

async fn call(client: &Client, op: Op) -> OpResult {
    client.call_one(op).await.unwrap()
}

async fn state(client: &Client, tx: u64) -> ledger_protocol::ops::Lifecycle {
    match client.call_one(Op::PurchaseState { tx }).await.unwrap() {
        OpResult::Ok(Reply::Lifecycle(lifecycle)) => lifecycle,
        other => panic!("{other:?}"),
    }
}

/// A basket's lifecycle over the wire: settled by id, refunded by receipt (lines) and by id
/// (amount), its state read by `purchase_state` and by an `explain` that asks for it; a second
/// purchase failed; a retry of a refund is a duplicate; illegal transitions are refused with
/// their statuses and change nothing; an 8-byte `explain` is answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_settle_fail_and_refund_over_the_wire() {
    use ledger_protocol::ops::{Lifecycle, PurchaseRef, RefundBy};
    let at = black_friday();
    let (server, _clock, file) = server_at(at).await;
    let client = server.client().await;
    let customer = 701;
    let write = |key, receipt: &str| WriteMeta {
        key,
        store: 3,
        category: 0,
        receipt: Receipt::new(receipt).unwrap(),
    };
    // 25.00 of electronics and a 10.00 gift card: 75 points, 12 cashback.
    let lines = [line(20, 2_500, false), line(40, 1_000, false)];
    let expected = priced(&file, &lines, 3, at, 0, (0, 0));
    assert_eq!((expected.points(), expected.cashback), (75, 12));
    let bought =
        committed(&client.call_one(basket(write(1, "L-1"), customer, &lines)).await.unwrap());
    let tx = bought.tx_id;
    let pending = state(&client, tx).await;
    assert_eq!(
        pending,
        Lifecycle {
            tx_id: tx,
            customer,
            state: 1,
            flags: 0,
            day: u32::try_from(at.0 / 86_400_000_000_000).unwrap(),
            spend: 3_500,
            weight: 5_000,
            refunded: 0,
            earned: expected.earned,
            bonus: expected.bonus,
            cashback: expected.cashback,
        }
    );
    // A pending purchase is not refundable.
    let early = Op::Refund {
        meta: write(2, ""),
        purchase: PurchaseRef::Id(tx),
        refund: RefundBy::Amount(100),
    };
    assert_eq!(call(&client, early).await, OpResult::Refused(Status::PurchaseNotSettled));
    let settled = committed(
        &call(&client, Op::Settle { meta: write(3, ""), purchase: PurchaseRef::Id(tx) }).await,
    );
    assert_eq!(settled.points, 0);
    assert_eq!(
        call(&client, Op::Settle { meta: write(4, ""), purchase: PurchaseRef::Id(tx) }).await,
        OpResult::Refused(Status::PurchaseAlreadySettled)
    );
    // The gift card earned nothing: its return takes back nothing.
    let gift = Op::Refund {
        meta: write(5, "L-1"),
        purchase: PurchaseRef::Receipt { customer },
        refund: RefundBy::Lines(Basket::new(&[line(40, 1_000, false)]).unwrap()),
    };
    assert_eq!(call(&client, gift).await, OpResult::Refused(Status::RefundZero));
    // Half the electronics line by receipt: half its weight, half of each component.
    let half = Op::Refund {
        meta: write(6, "L-1"),
        purchase: PurchaseRef::Receipt { customer },
        refund: RefundBy::Lines(Basket::new(&[line(20, 1_250, false)]).unwrap()),
    };
    let first = committed(&call(&client, half).await);
    assert_eq!(first.points, 37);
    let retry = committed(&call(&client, half).await);
    assert!(retry.duplicate);
    assert_eq!((retry.tx_id, retry.points), (first.tx_id, 37));
    assert_eq!(balance(&client, customer).await, Some(75 - 37));
    let now = state(&client, tx).await;
    assert_eq!((now.state, now.flags, now.refunded), (4, 1, 2_500));
    // By amount after by lines: another basis.
    let by_amount = Op::Refund {
        meta: write(7, ""),
        purchase: PurchaseRef::Id(tx),
        refund: RefundBy::Amount(100),
    };
    assert_eq!(call(&client, by_amount).await, OpResult::Refused(Status::RefundBasisMismatch));
    // The explanation, with the lifecycle when asked, as before when not.
    match call(&client, Op::Explain { tx, lifecycle: true }).await {
        OpResult::Ok(Reply::Explanation(explained)) => {
            assert_eq!(explained.lifecycle, Some(now));
            assert_eq!(explained.earned, expected.earned);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(explain(&client, tx).await.lifecycle, None);
    // A chargeback of the rest: everything the purchase gave is back with the programme.
    let charged = committed(
        &call(&client, Op::Fail { meta: write(8, ""), purchase: PurchaseRef::Id(tx) }).await,
    );
    assert_eq!(charged.points, 75 - 37);
    assert_eq!(balance(&client, customer).await, Some(0));
    assert_eq!(state(&client, tx).await.state, 3);
    assert_eq!(
        call(
            &client,
            Op::Refund {
                meta: write(9, ""),
                purchase: PurchaseRef::Id(tx),
                refund: RefundBy::Amount(1)
            }
        )
        .await,
        OpResult::Refused(Status::PurchaseFailed)
    );
    // Unknown purchases.
    assert_eq!(
        call(&client, Op::PurchaseState { tx: tx + 1 }).await,
        OpResult::Refused(Status::PurchaseNotFound)
    );
    assert_eq!(
        call(
            &client,
            Op::Settle { meta: write(10, "nope"), purchase: PurchaseRef::Receipt { customer } }
        )
        .await,
        OpResult::Refused(Status::PurchaseNotFound)
    );
    drop(client);
    server.stop().await;
}
