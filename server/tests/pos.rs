//! The POS protocol end to end over real sockets, against the real listener and engine:
//! every operation, pipelining, idempotent retries, the double-spend race, and every kind of
//! bad input and limit, each checked to change no balance.

mod common;

use common::TestServer;
use ledger_protocol::ops::{Committed, HistoryItem, Op, OpResult, Reply, WriteMeta};
use ledger_protocol::{Opcode, Receipt, Status};

fn meta(key: u128) -> WriteMeta {
    WriteMeta { key, store: 7, category: 2, receipt: Receipt::new("R-100").unwrap() }
}

fn committed(result: &OpResult) -> Committed {
    *result.committed().unwrap_or_else(|| panic!("not committed: {result:?}"))
}

async fn balance(client: &ledger_protocol::client::Client, customer: u64) -> i64 {
    match client.call_one(Op::Balance { customer }).await.unwrap() {
        OpResult::Ok(Reply::Balance(view)) => view.posted,
        OpResult::Refused(Status::AccountNotFound) => 0,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_end_to_end() {
    let server = TestServer::start().await;
    let client = server.client().await;
    assert_eq!(client.call_one(Op::Ping).await.unwrap(), OpResult::Ok(Reply::Pong));

    // A purchase of 123.45 earns 123 points at 1 point per 100 minor units.
    let purchase = client.call_one(Op::Purchase { meta: meta(1), customer: 42, amount: 12_345 });
    let purchase = committed(&purchase.await.unwrap());
    assert_eq!(purchase.points, 123);
    assert!(!purchase.duplicate);
    assert!(purchase.tx_id > 0 && purchase.lsn > 0 && purchase.timestamp > 0);
    assert_eq!(balance(&client, 42).await, 123);

    let redeem = client.call_one(Op::Redeem { meta: meta(2), customer: 42, points: 23 }).await;
    assert_eq!(committed(&redeem.unwrap()).points, 23);
    assert_eq!(balance(&client, 42).await, 100);

    // Authorize 60, capture 40 of it: 60 held, then 40 posted and 20 released.
    let hold = Op::Hold { meta: meta(3), customer: 42, points: 60, timeout_ms: 60_000 };
    let hold = committed(&client.call_one(hold).await.unwrap()).tx_id;
    match client.call_one(Op::Balance { customer: 42 }).await.unwrap() {
        OpResult::Ok(Reply::Balance(view)) => {
            assert_eq!((view.posted, view.available, view.held), (100, 40, 60));
        }
        other => panic!("{other:?}"),
    }
    let capture = Op::Capture { meta: meta(4), hold, points: 40 };
    assert_eq!(committed(&client.call_one(capture).await.unwrap()).points, 40);
    assert_eq!(balance(&client, 42).await, 60);
    let again = Op::Capture { meta: meta(5), hold, points: 1 };
    assert_eq!(
        client.call_one(again).await.unwrap(),
        OpResult::Refused(Status::HoldAlreadyCaptured)
    );

    // Authorize and void: nothing changes.
    let hold = Op::Hold { meta: meta(6), customer: 42, points: 10, timeout_ms: 60_000 };
    let hold = committed(&client.call_one(hold).await.unwrap()).tx_id;
    let void = client.call_one(Op::Void { meta: meta(7), hold }).await.unwrap();
    assert_eq!(committed(&void).points, 10, "a void reports the points it released");
    assert_eq!(balance(&client, 42).await, 60);

    // Reverse the purchase: the customer had 123 earned, spent 63; reversing takes back 123
    // and would overdraw, so it is refused; reverse the redemption instead.
    let reverse = client.call_one(Op::Reverse { meta: meta(8), tx: purchase.tx_id }).await;
    assert_eq!(reverse.unwrap(), OpResult::Refused(Status::InsufficientFunds));
    let redeem_tx = committed(
        &client.call_one(Op::Redeem { meta: meta(9), customer: 42, points: 5 }).await.unwrap(),
    )
    .tx_id;
    let reversed = client.call_one(Op::Reverse { meta: meta(10), tx: redeem_tx }).await.unwrap();
    assert_eq!(committed(&reversed).points, 5, "a reversal reports the points it turned round");
    assert_eq!(balance(&client, 42).await, 60);
    let twice = client.call_one(Op::Reverse { meta: meta(11), tx: redeem_tx }).await.unwrap();
    assert_eq!(twice, OpResult::Refused(Status::AlreadyReversed));

    // Transfers to a customer on the same shard and on the other one.
    let (same, other) = customers_beside(&server, 42);
    let mut transfers = Vec::new();
    for (key, destination) in [(12, same), (13, other)] {
        let transfer = Op::Transfer { meta: meta(key), source: 42, destination, points: 10 };
        let transfer = committed(&client.call_one(transfer).await.unwrap());
        assert_eq!(transfer.points, 10);
        transfers.push(transfer.tx_id);
    }
    assert_eq!(balance(&client, 42).await, 40);
    assert_eq!(balance(&client, same).await, 10);
    // The cross-shard credit lands once the destination shard applies it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while balance(&client, other).await != 10 {
        assert!(std::time::Instant::now() < deadline, "the cross-shard credit never landed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // History: newest first, with directions.
    let history = match client.call_one(Op::History { customer: 42, limit: 20 }).await.unwrap() {
        OpResult::Ok(Reply::History(items)) => items,
        other => panic!("{other:?}"),
    };
    let deltas: Vec<i128> = history.iter().map(|item| item.posted_delta()).collect();
    assert_eq!(deltas, vec![-10, -10, 5, -5, 0, 0, -40, 0, -23, 123]);
    assert_eq!(history.last().unwrap().tx_id, purchase.tx_id);
    assert_eq!(history.iter().map(|item| item.posted_delta()).sum::<i128>(), 40);
    // A reversed transaction is flagged reversed, and no longer reversible; the reversal
    // itself is not reversible; the purchase, never reversed, still is.
    let flags_of = |tx_id: u64| history.iter().find(|item| item.tx_id == tx_id).unwrap().flags;
    assert_eq!(flags_of(redeem_tx), HistoryItem::REVERSED);
    assert_eq!(flags_of(committed(&reversed).tx_id), HistoryItem::CREDIT);
    assert_eq!(flags_of(purchase.tx_id), HistoryItem::CREDIT | HistoryItem::REVERSIBLE);
    // Both legs of a transfer: the source's entries carry the transfer's ids; the destination
    // of the same-shard transfer has the same id, that of the cross-shard one the id of its
    // credit step, which its own shard assigned (docs/protocol.md, "History").
    assert_eq!(history[1].tx_id, transfers[0]);
    assert_eq!(history[0].tx_id, transfers[1]);
    let credit_of = |customer: u64| {
        let client = &client;
        async move {
            match client.call_one(Op::History { customer, limit: 5 }).await.unwrap() {
                OpResult::Ok(Reply::History(items)) => {
                    assert_eq!(items.len(), 1);
                    items[0]
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let credit = credit_of(same).await;
    let reversible = HistoryItem::CREDIT | HistoryItem::REVERSIBLE;
    assert_eq!((credit.tx_id, credit.kind, credit.flags), (transfers[0], 5, reversible));
    let credit = credit_of(other).await;
    assert_eq!((credit.kind, credit.flags, credit.amount), (5, HistoryItem::CREDIT, 10));
    assert_ne!(credit.tx_id, transfers[1]);
    let shard_bits = |tx_id: u64| (tx_id >> 12) & 0x3ff;
    let engine = &server.shared.engine;
    let other_shard = engine.shard_of_customer(ledger_engine::CustomerId(other)).index();
    assert_eq!(shard_bits(credit.tx_id), u64::from(other_shard));
    assert_ne!(shard_bits(transfers[1]), shard_bits(credit.tx_id));

    // Unknown customers and holds are typed refusals.
    assert_eq!(
        client.call_one(Op::Balance { customer: 999_999 }).await.unwrap(),
        OpResult::Refused(Status::AccountNotFound)
    );
    let void = client.call_one(Op::Void { meta: meta(14), hold: 12345 }).await.unwrap();
    assert_eq!(void, OpResult::Refused(Status::HoldNotFound));

    // A whole capture (points 0) reports the points it captured, and so does its retry.
    let hold = Op::Hold { meta: meta(15), customer: 42, points: 7, timeout_ms: 60_000 };
    let hold = committed(&client.call_one(hold).await.unwrap()).tx_id;
    let whole = Op::Capture { meta: meta(16), hold, points: 0 };
    let first = committed(&client.call_one(whole).await.unwrap());
    let retry = committed(&client.call_one(whole).await.unwrap());
    assert_eq!((first.points, first.duplicate), (7, false));
    assert_eq!((retry.points, retry.duplicate, retry.tx_id), (7, true, first.tx_id));
    assert_eq!(balance(&client, 42).await, 33);
    server.stop().await;
}

/// A customer on the same shard as `customer` and one on another shard.
fn customers_beside(server: &TestServer, customer: u64) -> (u64, u64) {
    let engine = &server.shared.engine;
    let shard = |c| engine.shard_of_customer(ledger_engine::CustomerId(c));
    let same = (1..).find(|c| *c != customer && shard(*c) == shard(customer)).unwrap();
    let other = (1..).find(|c| shard(*c) != shard(customer)).unwrap();
    (same, other)
}

use std::time::Duration;

use common::{RawReader, Received, raw, request};
use ledger_protocol::frame::{FrameType, put_header};
use tokio::io::AsyncWriteExt;

fn purchase(key: u128, customer: u64, amount: u64) -> Op {
    Op::Purchase { meta: meta(key), customer, amount }
}

/// A later request is answered first when an earlier one waits for its batch to become
/// durable: answers are matched by request id, not by order. And many requests from many
/// tasks on one connection each get their own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_matched_by_id_even_out_of_order() {
    let server = TestServer::start().await;
    let mut stream = raw(&server).await;
    let batch: Vec<Op> = (0..400).map(|i| purchase(10_000 + i, 1 + i as u64, 100)).collect();
    let mut bytes = request(100, &batch);
    bytes.extend(request(101, &[Op::Ping]));
    stream.write_all(&bytes).await.unwrap();
    let mut reader = RawReader::default();
    // The ping needs no fsync: it overtakes the batch written before it.
    match reader.next(&mut stream).await {
        Received::Response(101, results) => assert_eq!(results, vec![OpResult::Ok(Reply::Pong)]),
        other => panic!("expected the ping's answer first, got {other:?}"),
    }
    match reader.next(&mut stream).await {
        Received::Response(100, results) => {
            assert_eq!(results.len(), 400);
            assert!(results.iter().all(|r| r.committed().is_some_and(|c| c.points == 1)));
        }
        other => panic!("{other:?}"),
    }

    // 300 calls in flight at once from 300 tasks on one client: each answer is its own.
    let client = server.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u64 {
        let client = client.clone();
        tasks.spawn(async move {
            let amount = (i + 1) * 100;
            let result = client.call_one(purchase(20_000 + u128::from(i), 5_000 + i, amount)).await;
            (i, result.unwrap())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        assert_eq!(committed(&result).points, i + 1, "answer {i} belongs to request {i}");
    }
    server.stop().await;
}

/// A request whose id is the id of an unanswered request of the connection is refused whole,
/// `request_id_in_use`, with an `Error` frame under that id that comes before the first
/// request's answer; nothing of it is applied. Once answered, an id may be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_in_flight_is_refused_request_id_in_use() {
    let server = TestServer::start().await;
    let mut stream = raw(&server).await;
    // A batch that waits for its fdatasync, then a request with the same id in the same write.
    let batch: Vec<Op> = (0..400).map(|i| purchase(30_000 + i, 700 + i as u64, 100)).collect();
    let mut bytes = request(5, &batch);
    bytes.extend(request(5, &[purchase(31_000, 1_234, 10_000)]));
    stream.write_all(&bytes).await.unwrap();
    let mut reader = RawReader::default();
    match reader.next(&mut stream).await {
        Received::Error(5, Status::RequestIdInUse, _) => {}
        other => panic!("expected the second request refused first, got {other:?}"),
    }
    match reader.next(&mut stream).await {
        Received::Response(5, results) => {
            assert_eq!(results.len(), 400, "the answer is the first request's");
            assert!(results.iter().all(|r| r.committed().is_some_and(|c| c.points == 1)));
        }
        other => panic!("{other:?}"),
    }
    // Answered: the id is free again, and the refused purchase had posted nothing.
    stream.write_all(&request(5, &[Op::Balance { customer: 1_234 }])).await.unwrap();
    match reader.next(&mut stream).await {
        Received::Response(5, results) => {
            assert_eq!(results, vec![OpResult::Refused(Status::AccountNotFound)])
        }
        other => panic!("{other:?}"),
    }
    assert!(server.shared.stats.outcomes(Status::RequestIdInUse) == 1);
    server.stop().await;
}

/// A retry with the same key after the connection dropped returns the original result and
/// posts nothing; the same key for another operation is a conflict. A request whose
/// connection dropped before its answer is settled by the retry: posted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_dropped_connection_returns_the_original_result() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let first = committed(&client.call_one(purchase(77, 9, 5_000)).await.unwrap());
    drop(client);
    let client = server.client().await;
    let again = committed(&client.call_one(purchase(77, 9, 5_000)).await.unwrap());
    assert!(again.duplicate);
    assert_eq!(
        (again.tx_id, again.lsn, again.timestamp),
        (first.tx_id, first.lsn, first.timestamp)
    );
    assert_eq!(balance(&client, 9).await, 50);
    let conflict = client.call_one(purchase(77, 9, 6_000)).await.unwrap();
    assert_eq!(conflict, OpResult::Refused(Status::IdempotencyConflict));
    // Another terminal's key 77 is another key.
    let other = server.client_as(2, &[2; 32]).await;
    assert!(!committed(&other.call_one(purchase(77, 9, 6_000)).await.unwrap()).duplicate);
    assert_eq!(balance(&client, 9).await, 110);

    // Sent, then the connection dropped before any answer was read.
    let mut stream = raw(&server).await;
    stream.write_all(&request(1, &[purchase(78, 10, 10_000)])).await.unwrap();
    drop(stream);
    let retried = client.call_one(purchase(78, 10, 10_000)).await.unwrap();
    committed(&retried);
    assert_eq!(balance(&client, 10).await, 100, "posted exactly once, whichever came first");
    server.stop().await;
}

/// A purchase that earns nothing (below the 1-point rate) is recorded like any other: it gets
/// its own transaction id, its key is taken (a retry is a duplicate, another payload a
/// conflict), also within the request that committed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_that_earns_nothing_is_recorded_and_takes_its_key() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let first = committed(&client.call_one(purchase(50, 8, 10_000)).await.unwrap());
    assert_eq!(first.points, 100);
    let tiny = |key| purchase(key, 8, 99);
    assert_eq!(
        client.call_one(tiny(50)).await.unwrap(),
        OpResult::Refused(Status::IdempotencyConflict)
    );
    let nothing = committed(&client.call_one(tiny(51)).await.unwrap());
    assert!(nothing.tx_id != 0 && nothing.points == 0 && !nothing.duplicate);
    let again = committed(&client.call_one(tiny(51)).await.unwrap());
    assert_eq!((again.tx_id, again.duplicate), (nothing.tx_id, true));
    assert_eq!(
        client.call_one(purchase(51, 8, 500)).await.unwrap(),
        OpResult::Refused(Status::IdempotencyConflict)
    );
    // In one request: the first commits, the second finds its key taken.
    let results = client.call(&[purchase(52, 8, 300), tiny(52)]).await.unwrap();
    assert_eq!(committed(&results[0]).points, 3);
    assert_eq!(results[1], OpResult::Refused(Status::IdempotencyConflict));
    // Another terminal's key 50 is another key.
    let other = server.client_as(2, &[2; 32]).await;
    assert_eq!(committed(&other.call_one(tiny(50)).await.unwrap()).points, 0);
    assert_eq!(balance(&client, 8).await, 103);
    server.stop().await;
}

/// A customer's posted balance never exceeds what `balance` can report (2^63 − 1): every write
/// that would take it further is refused `overflow` (a cross-shard transfer is refunded), and
/// changes nothing; the balance stays reportable. One point per minor unit here, so that one
/// purchase reaches the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_takes_a_balance_beyond_what_balance_reports() {
    let config = ledger_server::config::PosConfig {
        earn_points: 1,
        earn_per_minor_units: 1,
        ..common::pos_config()
    };
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    let max = i64::MAX as u64;
    let (rich, same, other) = {
        let (same, other) = customers_beside(&server, 60);
        (60, same, other)
    };
    assert_eq!(committed(&client.call_one(purchase(1, rich, max)).await.unwrap()).points, max);
    let overflow = OpResult::Refused(Status::Overflow);
    assert_eq!(client.call_one(purchase(2, rich, 1)).await.unwrap(), overflow);
    assert_eq!(client.call_one(purchase(3, rich, u64::MAX)).await.unwrap(), overflow);
    // Spend some, earn it back to the bound exactly; reversing the spending goes beyond it.
    let redeem = Op::Redeem { meta: meta(4), customer: rich, points: 10 };
    let redeemed = committed(&client.call_one(redeem).await.unwrap()).tx_id;
    committed(&client.call_one(purchase(5, rich, 10)).await.unwrap());
    let reverse = Op::Reverse { meta: meta(6), tx: redeemed };
    assert_eq!(client.call_one(reverse).await.unwrap(), overflow);
    // Transfers to the customer at the bound: refused on its shard, refunded from another.
    for customer in [same, other] {
        committed(&client.call_one(purchase(u128::from(customer), customer, 100)).await.unwrap());
    }
    let to_rich =
        |key, source| Op::Transfer { meta: meta(key), source, destination: rich, points: 7 };
    assert_eq!(client.call_one(to_rich(7, same)).await.unwrap(), overflow);
    assert_eq!(
        client.call_one(to_rich(8, other)).await.unwrap(),
        OpResult::Refused(Status::TransferRefunded)
    );
    match client.call_one(Op::Balance { customer: rich }).await.unwrap() {
        OpResult::Ok(Reply::Balance(view)) => {
            assert_eq!((view.posted, view.available, view.held), (i64::MAX, i64::MAX, 0))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((balance(&client, same).await, balance(&client, other).await), (100, 100));
    server.stop().await;
}

/// The double-spend guarantee over the wire: two terminals on two connections redeem 800 of
/// a 1,000 balance at the same moment; exactly one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_concurrent_800_point_redemptions_from_1000_succeeds() {
    let server = TestServer::start().await;
    let setup = server.client().await;
    let customers: Vec<u64> = (900..930).collect();
    let earns: Vec<Op> = customers.iter().map(|c| purchase(u128::from(*c), *c, 100_000)).collect();
    for result in setup.call(&earns).await.unwrap() {
        assert_eq!(committed(&result).points, 1_000);
    }
    let (a, b) = (server.client().await, server.client_as(2, &[2; 32]).await);
    for customer in customers {
        let redeem = |key| Op::Redeem { meta: meta(key), customer, points: 800 };
        let (left, right) = tokio::join!(
            a.call_one(redeem(u128::from(customer) * 10 + 1)),
            b.call_one(redeem(u128::from(customer) * 10 + 2))
        );
        let outcomes = [left.unwrap(), right.unwrap()];
        let won = outcomes.iter().filter(|r| r.committed().is_some()).count();
        let lost =
            outcomes.iter().filter(|r| **r == OpResult::Refused(Status::InsufficientFunds)).count();
        assert_eq!((won, lost), (1, 1), "customer {customer}: {outcomes:?}");
        assert_eq!(balance(&setup, customer).await, 200);
    }
    server.stop().await;
}

/// A hold stops counting against the available balance at its deadline, before any request
/// of the shard is applied, whether or not its release was logged: right after a restart
/// (the server stopped before the deadline) and while running. The shards' tick is a minute
/// here, so nothing but the start of a turn can expire the holds; time is a manual clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_past_its_deadline_no_longer_counts_even_before_its_release_is_logged() {
    use ledger_engine::clock::{Clock, ManualClock};
    let start = ledger_engine::Timestamp(1_800_000_000 * 1_000_000_000);
    let clock = std::sync::Arc::new(ManualClock::new(start));
    let tuning = ledger_engine::ShardTuning { tick: Duration::from_secs(60), ..Default::default() };
    let shared_clock = || Some(std::sync::Arc::clone(&clock) as std::sync::Arc<dyn Clock>);
    let config = common::pos_config;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir, config(), tuning.clone(), shared_clock()).await;
    let client = server.client().await;
    committed(&client.call_one(purchase(1, 42, 100_000)).await.unwrap());
    let hold = Op::Hold { meta: meta(2), customer: 42, points: 700, timeout_ms: 1_000 };
    let hold = committed(&client.call_one(hold).await.unwrap()).tx_id;
    let view = |result: OpResult| match result {
        OpResult::Ok(Reply::Balance(view)) => (view.posted, view.available, view.held),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        view(client.call_one(Op::Balance { customer: 42 }).await.unwrap()),
        (1_000, 300, 700)
    );

    // Stopped before the deadline: no release is logged. Restarted after it.
    drop(client);
    let dir = server.stop_engine().await;
    clock.advance(2_000_000_000);
    let server = TestServer::start_in(dir, config(), tuning.clone(), shared_clock()).await;
    let client = server.client().await;
    let redeem = Op::Redeem { meta: meta(3), customer: 42, points: 800 };
    assert_eq!(committed(&client.call_one(redeem).await.unwrap()).points, 800);
    let capture = Op::Capture { meta: meta(4), hold, points: 0 };
    assert_eq!(client.call_one(capture).await.unwrap(), OpResult::Refused(Status::HoldExpired));
    assert_eq!(view(client.call_one(Op::Balance { customer: 42 }).await.unwrap()), (200, 200, 0));
    // The release is in the history, logged before the redemption.
    let history = match client.call_one(Op::History { customer: 42, limit: 10 }).await.unwrap() {
        OpResult::Ok(Reply::History(items)) => items,
        other => panic!("{other:?}"),
    };
    let flags: Vec<u8> = history.iter().map(|item| item.flags).collect();
    assert_eq!(flags[..2], [HistoryItem::REVERSIBLE, HistoryItem::RELEASE], "{history:?}");

    // While running: a hold whose deadline is now is released before the next request.
    let hold = Op::Hold { meta: meta(5), customer: 42, points: 150, timeout_ms: 1_000 };
    let hold = committed(&client.call_one(hold).await.unwrap()).tx_id;
    assert_eq!(view(client.call_one(Op::Balance { customer: 42 }).await.unwrap()), (200, 50, 150));
    clock.advance(1_000_000_000);
    assert_eq!(view(client.call_one(Op::Balance { customer: 42 }).await.unwrap()), (200, 200, 0));
    let redeem = Op::Redeem { meta: meta(6), customer: 42, points: 200 };
    assert_eq!(committed(&client.call_one(redeem).await.unwrap()).points, 200);
    let void = Op::Void { meta: meta(7), hold };
    assert_eq!(client.call_one(void).await.unwrap(), OpResult::Refused(Status::HoldExpired));

    // Replay reaches the same state: the expiries are records.
    drop(client);
    let dir = server.stop_engine().await;
    let server = TestServer::start_in(dir, config(), tuning, shared_clock()).await;
    let client = server.client().await;
    assert_eq!(view(client.call_one(Op::Balance { customer: 42 }).await.unwrap()), (0, 0, 0));
    server.stop().await;
}

/// Reads what a raw connection gets after sending `bytes`, up to the close.
async fn answers_to(server: &TestServer, authenticate: bool, bytes: &[u8]) -> Vec<Received> {
    let mut stream = if authenticate {
        raw(server).await
    } else {
        tokio::net::TcpStream::connect(server.addr).await.unwrap()
    };
    stream.write_all(bytes).await.unwrap();
    let mut reader = RawReader::default();
    let mut received = Vec::new();
    loop {
        let next = reader.next(&mut stream).await;
        let closed = matches!(next, Received::Closed);
        received.push(next);
        if closed || received.len() > 10 {
            return received;
        }
    }
}

fn header_only(frame_type: u8, version: u8, length: u32) -> Vec<u8> {
    let mut bytes = length.to_le_bytes().to_vec();
    bytes.extend([version, frame_type, 0, 0]);
    bytes.extend(5u64.to_le_bytes());
    bytes
}

fn closed_with(received: &[Received], expected: Status) {
    match received {
        [Received::Error(0, status, _), Received::Closed] if *status == expected => {}
        other => panic!("expected {expected} then the close, got {other:?}"),
    }
}

/// Every kind of bad input gets a typed answer, and none changes a balance: framing and
/// authentication violations close the connection after an error frame; a bad request body
/// is refused whole with an error frame for its id and the connection goes on; a bad
/// operation gets its own status while the others in its request proceed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_oversized_and_unauthenticated_frames_are_refused() {
    let server = TestServer::start().await;
    let probe = server.client().await;
    committed(&probe.call_one(purchase(1, 1, 1_000)).await.unwrap());

    // Not authenticated: a request (short enough to pass the handshake's frame limit), a wrong
    // MAC, an unknown terminal.
    closed_with(
        &answers_to(&server, false, &request(1, &[Op::Ping])).await,
        Status::NotAuthenticated,
    );
    let bad_mac = async {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        ledger_protocol::client::handshake(&mut stream, 1, b"not the secret at all").await
    };
    match bad_mac.await {
        Err(ledger_protocol::client::ClientError::Closed { status, .. }) => {
            assert_eq!(status, Status::AuthFailed)
        }
        other => panic!("{other:?}"),
    }
    let unknown = async {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        ledger_protocol::client::handshake(&mut stream, 4_000, &[1; 32]).await
    };
    assert!(matches!(
        unknown.await,
        Err(ledger_protocol::client::ClientError::Closed { status: Status::AuthFailed, .. })
    ));

    // Framing violations after the handshake.
    closed_with(
        &answers_to(&server, true, &header_only(16, 9, 12)).await,
        Status::UnsupportedVersion,
    );
    closed_with(
        &answers_to(&server, true, &header_only(16, 1, 64 << 20)).await,
        Status::FrameTooLarge,
    );
    closed_with(&answers_to(&server, true, &header_only(99, 1, 12)).await, Status::UnexpectedFrame);
    closed_with(&answers_to(&server, true, &header_only(16, 1, 3)).await, Status::UnexpectedFrame);
    let mut hello = Vec::new();
    ledger_protocol::session::encode_hello(&mut hello, 1);
    closed_with(&answers_to(&server, true, &hello).await, Status::UnexpectedFrame);

    // A request whose body lies about its operations: refused whole; the connection goes on.
    let mut lying = request(7, &[purchase(3, 1, 100)]);
    lying[16] = 2; // op count 2, one operation present
    let mut bytes = lying;
    bytes.extend(request(8, &[]));
    bytes.extend(request(9, &[Op::Ping]));
    let mut stream = raw(&server).await;
    stream.write_all(&bytes).await.unwrap();
    let mut reader = RawReader::default();
    assert!(matches!(reader.next(&mut stream).await, Received::Error(7, Status::Malformed, _)));
    assert!(matches!(reader.next(&mut stream).await, Received::Error(8, Status::BatchTooLarge, _)));
    assert!(matches!(reader.next(&mut stream).await, Received::Response(9, _)));

    // A bad operation among good ones: its own status; the others proceed.
    let mut ops_bytes = Vec::new();
    put_header(&mut ops_bytes, FrameType::Request, 10, 4 + 4 + (4 + 3) + 4);
    ops_bytes.extend([3, 0, 0, 0]); // three operations
    ops_bytes.extend([200, 0, 0, 0]); // an unknown opcode, empty body
    ops_bytes.extend([Opcode::Balance as u8, 0, 3, 0, 1, 2, 3]); // a truncated balance
    ops_bytes.extend([Opcode::Ping as u8, 0, 0, 0]);
    stream.write_all(&ops_bytes).await.unwrap();
    match reader.next(&mut stream).await {
        Received::Response(10, results) => assert_eq!(
            results,
            vec![
                OpResult::Refused(Status::UnknownOpcode),
                OpResult::Refused(Status::Malformed),
                OpResult::Ok(Reply::Pong)
            ]
        ),
        other => panic!("{other:?}"),
    }
    // A reserved byte of an operation header that is not 0: the whole request is malformed,
    // its good operations included.
    let mut reserved = request(20, &[purchase(20, 1, 100_000), Op::Ping]);
    let ping_header = reserved.len() - 4;
    reserved[ping_header + 1] = 1;
    stream.write_all(&reserved).await.unwrap();
    assert!(matches!(reader.next(&mut stream).await, Received::Error(20, Status::Malformed, _)));
    let zero_amount = Op::Redeem { meta: meta(11), customer: 1, points: 0 };
    let zero_key = Op::Redeem { meta: WriteMeta { key: 0, ..meta(0) }, customer: 1, points: 1 };
    stream.write_all(&request(11, &[zero_amount, zero_key])).await.unwrap();
    match reader.next(&mut stream).await {
        Received::Response(11, results) => assert_eq!(
            results,
            vec![
                OpResult::Refused(Status::AmountZero),
                OpResult::Refused(Status::IdempotencyKeyMissing)
            ]
        ),
        other => panic!("{other:?}"),
    }

    // Request id 0 is reserved for the connection itself.
    closed_with(
        &answers_to(&server, true, &request(0, &[Op::Ping])).await,
        Status::UnexpectedFrame,
    );
    // A purchase too small to earn anything still needs a key.
    let tiny = Op::Purchase { meta: WriteMeta { key: 0, ..meta(0) }, customer: 1, amount: 5 };
    assert_eq!(
        probe.call_one(tiny).await.unwrap(),
        OpResult::Refused(Status::IdempotencyKeyMissing)
    );

    // A frame cut short by the client's close: the requests before it are answered, the cut
    // one is dropped unanswered and unapplied, and an error frame says why before the close.
    let mut bytes = request(12, &[purchase(12, 1, 200)]);
    let cut = request(13, &[purchase(13, 1, 100_000)]);
    bytes.extend(&cut[..cut.len() - 5]);
    let mut stream = raw(&server).await;
    stream.write_all(&bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reader = RawReader::default();
    assert!(matches!(reader.next(&mut stream).await, Received::Response(12, _)));
    assert!(matches!(
        reader.next(&mut stream).await,
        Received::Error(0, Status::UnexpectedFrame, _)
    ));
    assert!(matches!(reader.next(&mut stream).await, Received::Closed));
    // Cut inside the header, during the handshake: the same.
    let mut hello = Vec::new();
    ledger_protocol::session::encode_hello(&mut hello, 1);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&hello[..10]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reader = RawReader::default();
    assert!(matches!(
        reader.next(&mut stream).await,
        Received::Error(0, Status::UnexpectedFrame, _)
    ));
    assert!(matches!(reader.next(&mut stream).await, Received::Closed));
    // A clean close gets nothing.
    let mut stream = raw(&server).await;
    stream.shutdown().await.unwrap();
    assert!(matches!(RawReader::default().next(&mut stream).await, Received::Closed));

    // Random bytes after a handshake never crash the server or move a point.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..64 {
        let len = 1 + (round * 37) % 300;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut stream = raw(&server).await;
        let _ = stream.write_all(&junk).await;
        drop(stream);
    }

    assert_eq!(balance(&probe, 1).await, 12, "only request 12's purchase moved points");
    assert_eq!(client_ping(&server).await, OpResult::Ok(Reply::Pong));
    let stats = &server.shared.stats;
    for status in [
        Status::NotAuthenticated,
        Status::AuthFailed,
        Status::UnsupportedVersion,
        Status::FrameTooLarge,
        Status::UnexpectedFrame,
        Status::Malformed,
        Status::BatchTooLarge,
        Status::UnknownOpcode,
    ] {
        assert!(stats.outcomes(status) > 0, "{status} was counted");
    }
    assert!(stats.auth_failures.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    server.stop().await;
}

/// Before the `Welcome`, a connection may make the server hold one handshake frame (48 bytes):
/// a longer frame is refused from its header alone, before its body is sent; handshake frames
/// carry request id 0; and at most `handshakes_max` connections may be unauthenticated at
/// once, each for at most the handshake time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_hold_at_most_a_handshake_frame() {
    let config = ledger_server::config::PosConfig {
        connections_max: 8,
        handshakes_max: 2,
        handshake_timeout: Duration::from_millis(500),
        ..common::pos_config()
    };
    let server = TestServer::start_with(config).await;
    let handshake_max = ledger_protocol::session::HANDSHAKE_FRAME_BYTES_MAX;
    assert_eq!(handshake_max, 48);

    // A Hello announcing a 1 MiB body, and a Request announcing one: only headers are sent, and
    // the refusal comes at once.
    let mut hello = 0u32.to_le_bytes().to_vec();
    hello.extend([1, FrameType::Hello as u8, 0, 0]);
    hello.extend(0u64.to_le_bytes());
    hello[..4].copy_from_slice(&((1u32 << 20) - 4).to_le_bytes());
    closed_with(&answers_to(&server, false, &hello).await, Status::FrameTooLarge);
    closed_with(
        &answers_to(&server, false, &header_only(16, 1, 1 << 20)).await,
        Status::FrameTooLarge,
    );
    // One byte over the limit is too large; a request that would fit a session is too large
    // before the handshake.
    let mut long_hello = Vec::new();
    put_header(&mut long_hello, FrameType::Hello, 0, handshake_max - 16 + 1);
    long_hello.resize(handshake_max + 1, 0);
    closed_with(&answers_to(&server, false, &long_hello).await, Status::FrameTooLarge);
    let purchase_request = request(1, &[purchase(2, 1, 100)]);
    assert!(purchase_request.len() > handshake_max);
    closed_with(&answers_to(&server, false, &purchase_request).await, Status::FrameTooLarge);

    // Handshake frames carry request id 0.
    let mut hello = Vec::new();
    ledger_protocol::session::encode_hello(&mut hello, 1);
    hello[8] = 7;
    closed_with(&answers_to(&server, false, &hello).await, Status::UnexpectedFrame);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut hello = Vec::new();
    ledger_protocol::session::encode_hello(&mut hello, 1);
    stream.write_all(&hello).await.unwrap();
    let mut reader = ledger_protocol::client::FrameReader::new(1024);
    let nonce = loop {
        if let Some((header, body)) = reader.next_frame().unwrap() {
            assert_eq!(header.frame_type, FrameType::Challenge);
            break ledger_protocol::session::decode_challenge(body).unwrap();
        }
        assert!(reader.fill(&mut stream).await.unwrap());
    };
    let mut auth = Vec::new();
    let mac = ledger_protocol::session::auth_mac(&common::SECRET, 1, &nonce);
    ledger_protocol::session::encode_auth(&mut auth, &mac);
    auth[8] = 7;
    stream.write_all(&auth).await.unwrap();
    let mut raw_reader = RawReader::default();
    assert!(matches!(
        raw_reader.next(&mut stream).await,
        Received::Error(0, Status::UnexpectedFrame, _)
    ));
    assert!(matches!(raw_reader.next(&mut stream).await, Received::Closed));

    // Two connections may be unauthenticated at once. A terminal that authenticates gives its
    // place back, so it does not count; a third silent connection is refused `busy`.
    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let client = server.client().await;
    let other = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    closed_with(&answers_to_unauthenticated_connect(&server).await, Status::Busy);
    let refused =
        server.shared.stats.connections_refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 1);
    // The silent ones are closed when the handshake time is up; then a terminal connects again.
    for mut stream in [silent, other] {
        let mut reader = RawReader::default();
        let answer = reader.next(&mut stream).await;
        assert!(matches!(answer, Received::Error(0, Status::AuthFailed, _)), "{answer:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(client_ping(&server).await, OpResult::Ok(Reply::Pong));
    assert_eq!(client.call_one(Op::Ping).await.unwrap(), OpResult::Ok(Reply::Pong));
    server.stop().await;
}

async fn client_ping(server: &TestServer) -> OpResult {
    server.client().await.call_one(Op::Ping).await.unwrap()
}

/// Each limit is a typed refusal that changes nothing: operations per request, requests in
/// flight per connection, a terminal's rate, connections, and the handshake's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_typed_refusals() {
    let config = ledger_server::config::PosConfig {
        batch_ops_max: 16,
        in_flight_max: 4,
        ops_in_flight_max: 20,
        ops_in_flight_total_max: 1_000,
        frame_bytes_max: 64 * 1024,
        connections_max: 3,
        handshake_timeout: Duration::from_millis(300),
        ..common::pos_config()
    };
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    let welcome = client.welcome();
    assert_eq!((welcome.batch_ops_max, welcome.in_flight_max), (16, 4));
    let seventeen: Vec<Op> = (0..17).map(|i| purchase(100 + i, 1, 100)).collect();
    match client.call(&seventeen).await {
        Err(ledger_protocol::client::ClientError::Refused { status, .. }) => {
            assert_eq!(status, Status::BatchTooLarge)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(&client, 1).await, 0);

    // Ten requests at once on a connection that allows four in flight.
    let mut stream = raw(&server).await;
    let mut bytes = Vec::new();
    for id in 1..=10 {
        bytes.extend(request(id, &[purchase(200 + u128::from(id), 2, 100)]));
    }
    stream.write_all(&bytes).await.unwrap();
    let mut reader = RawReader::default();
    let (mut answered, mut refused) = (0, 0);
    for _ in 0..10 {
        match reader.next(&mut stream).await {
            Received::Response(_, results) => {
                committed(&results[0]);
                answered += 1;
            }
            Received::Error(_, Status::TooManyInFlight, _) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((answered, refused), (4, 6));
    assert_eq!(balance(&client, 2).await, 4, "refused requests posted nothing");

    // Answers that could not fit a frame: 16 full histories are 115 KiB; with a 64 KiB frame
    // limit the request is refused, while 16 short ones pass.
    let histories =
        |limit| -> Vec<Op> { (0..16).map(|_| Op::History { customer: 2, limit }).collect() };
    assert!(matches!(
        client.call(&histories(256)).await,
        Err(ledger_protocol::client::ClientError::Refused { status: Status::BatchTooLarge, .. })
    ));
    assert_eq!(client.call(&histories(10)).await.unwrap().len(), 16);

    // Two requests of 16 operations at once where a connection may have 20 in flight.
    let sixteen = |base: u128| -> Vec<Op> { (0..16).map(|i| purchase(base + i, 4, 100)).collect() };
    let mut bytes = request(20, &sixteen(400));
    bytes.extend(request(21, &sixteen(500)));
    stream.write_all(&bytes).await.unwrap();
    assert!(matches!(
        reader.next(&mut stream).await,
        Received::Error(21, Status::TooManyInFlight, _)
    ));
    assert!(matches!(reader.next(&mut stream).await, Received::Response(20, _)));
    // And when the server as a whole holds its maximum, a request is refused `busy`.
    let total = std::sync::Arc::clone(&server.shared.ops_in_flight);
    total.fetch_add(990, std::sync::atomic::Ordering::Relaxed);
    stream.write_all(&request(22, &sixteen(600))).await.unwrap();
    assert!(matches!(reader.next(&mut stream).await, Received::Error(22, Status::Busy, _)));
    total.fetch_sub(990, std::sync::atomic::Ordering::Relaxed);
    stream.write_all(&request(23, &sixteen(700))).await.unwrap();
    assert!(matches!(reader.next(&mut stream).await, Received::Response(23, _)));
    assert_eq!(balance(&client, 4).await, 32, "only the two accepted requests posted");

    // Terminal 3 may send 5 operations a second, with a burst of one second's worth.
    let limited = server.client_as(3, &[3; 32]).await;
    assert_eq!(limited.welcome().rate_per_second, 5);
    let six: Vec<Op> = (0..6).map(|i| purchase(300 + i, 3, 100)).collect();
    assert!(matches!(
        limited.call(&six).await,
        Err(ledger_protocol::client::ClientError::Refused { status: Status::RateLimited, .. })
    ));
    assert!(limited.call(&six[..5]).await.unwrap().iter().all(|r| r.committed().is_some()));
    assert!(matches!(
        limited.call_one(Op::Ping).await,
        Err(ledger_protocol::client::ClientError::Refused { status: Status::RateLimited, .. })
    ));
    assert_eq!(balance(&client, 3).await, 5);

    // Three connections are open (client, stream, limited): a fourth is refused `busy`.
    let refused = answers_to_unauthenticated_connect(&server).await;
    closed_with(&refused, Status::Busy);
    drop(stream);
    drop(limited);

    // A connection that never authenticates is closed when the handshake time is up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut reader = RawReader::default();
    assert!(matches!(reader.next(&mut silent).await, Received::Error(0, Status::AuthFailed, _)));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(matches!(reader.next(&mut silent).await, Received::Closed));
    let stats = &server.shared.stats;
    for status in
        [Status::BatchTooLarge, Status::TooManyInFlight, Status::RateLimited, Status::Busy]
    {
        assert!(stats.outcomes(status) > 0, "{status} was counted");
    }
    assert_eq!(stats.connections_refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    let total = std::sync::Arc::clone(&server.shared.ops_in_flight);
    server.stop().await;
    assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), 0, "every operation released");
}

async fn answers_to_unauthenticated_connect(server: &TestServer) -> Vec<Received> {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut reader = RawReader::default();
    vec![reader.next(&mut stream).await, reader.next(&mut stream).await]
}

/// A client that sends without reading its answers fills its own socket and output buffer
/// and then is no longer read from; other clients are served as usual meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_stall_others() {
    let server = TestServer::start().await;
    let client = server.client().await;
    // Customer 1 gets a long history, so every history answer is large (about 7 KiB).
    let earns: Vec<Op> = (0..256).map(|i| purchase(1_000 + i, 1, 100)).collect();
    client.call(&earns).await.unwrap();

    let mut stalled = raw(&server).await;
    let history: Vec<Op> = (0..64).map(|_| Op::History { customer: 1, limit: 256 }).collect();
    let writer = tokio::spawn(async move {
        // Never reads: once the server stops reading it, these writes block.
        let mut id = 0;
        loop {
            id += 1;
            if stalled.write_all(&request(id, &history)).await.is_err() {
                return id;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!writer.is_finished(), "the stalled client's writes are blocked, not failing");

    // Meanwhile another client is served promptly.
    let started = std::time::Instant::now();
    for i in 0..100 {
        let result = client.call_one(purchase(5_000 + i, 2, 100)).await.unwrap();
        committed(&result);
    }
    assert_eq!(balance(&client, 2).await, 100);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "100 calls took {:?} next to a stalled client",
        started.elapsed()
    );
    writer.abort();
    let total = std::sync::Arc::clone(&server.shared.ops_in_flight);
    server.stop().await;
    // The stalled connection's operations were all answered (into its unread buffer) or are
    // released as the engine answers them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while total.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        assert!(std::time::Instant::now() < deadline, "operations still counted in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
