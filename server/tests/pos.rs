//! The POS protocol end to end over real sockets, against the real listener and engine:
//! every operation, pipelining, idempotent retries, the double-spend race, and every kind of
//! bad input and limit, each checked to change no balance.

mod common;

use common::TestServer;
use ledger_protocol::ops::{Committed, Op, OpResult, Reply, WriteMeta};
use ledger_protocol::{Receipt, Status};

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
    client.call_one(Op::Void { meta: meta(7), hold }).await.unwrap().committed().unwrap();
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
    committed(&reversed);
    assert_eq!(balance(&client, 42).await, 60);
    let twice = client.call_one(Op::Reverse { meta: meta(11), tx: redeem_tx }).await.unwrap();
    assert_eq!(twice, OpResult::Refused(Status::AlreadyReversed));

    // Transfers to a customer on the same shard and on the other one.
    let (same, other) = customers_beside(&server, 42);
    for (key, destination) in [(12, same), (13, other)] {
        let transfer = Op::Transfer { meta: meta(key), source: 42, destination, points: 10 };
        assert_eq!(committed(&client.call_one(transfer).await.unwrap()).points, 10);
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

    // Unknown customers and holds are typed refusals.
    assert_eq!(
        client.call_one(Op::Balance { customer: 999_999 }).await.unwrap(),
        OpResult::Refused(Status::AccountNotFound)
    );
    let void = client.call_one(Op::Void { meta: meta(14), hold: 12345 }).await.unwrap();
    assert_eq!(void, OpResult::Refused(Status::HoldNotFound));
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
