//! The WAL and snapshot decoders against bytes nobody wrote: `ledger-wal` reads files from
//! anywhere, and a checksum only proves that bytes are the ones written, not that the writer
//! was this code. Whatever the bytes, decoding returns a value or an error; it never panics, and
//! a snapshot body that decodes either passes the invariant check or is reported by it.
//!
//! The inputs are real records and a real snapshot body (from an engine run that uses every
//! record kind), mutated: bytes flipped, 8-byte fields set to extreme values, truncated and
//! extended; and plain random bytes for every record kind.

use std::sync::{Arc, OnceLock};

use ledger_engine::clock::ManualClock;
use ledger_engine::ledger::Ledger;
use ledger_engine::ledger::record::RecordKind;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::snapshot::{self, SNAPSHOT_HEADER_BYTES, SnapshotHeader};
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::wal::payload::decode_body;
use ledger_engine::wal::reader::{self, ScanOptions};
use ledger_engine::{Engine, EngineConfig, Limits, Response, ShardId, Timestamp};
use proptest::prelude::*;

const SECOND: u64 = 1_000_000_000;

/// Every record kind (docs/wal-format.md): the sixteen of transactions and the four
/// definitions.
const KINDS: [u16; 20] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];

/// Records (kind, payload) of a run, the snapshot file of shard 0 taken at its end, and the
/// ledger configuration to decode it with.
struct Corpus {
    records: Vec<(RecordKind, Vec<u8>)>,
    snapshot: Vec<u8>,
    config: ledger_engine::ledger::LedgerConfig,
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000 * SECOND)));
        let mut config = EngineConfig::new(dir.path());
        config.shard_count = Some(2);
        config.limits = Limits::test_min();
        config.clock = clock.clone();
        config.tuning.snapshot_on_shutdown = false;
        let engine = Engine::open(config).unwrap();
        let loyalty = Loyalty::define(&engine);
        // Customers 1 and 2 live on shard 0, customer 0 on shard 1.
        execute_all(&engine, vec![loyalty.earn(1, 1, 1_000), loyalty.earn(2, 2, 500)]);
        let hold = engine.execute(loyalty.hold(3, 1, 100, 2 * SECOND)).committed().unwrap();
        engine.execute(loyalty.capture(4, hold.tx_id, Some(40)));
        let void = engine.execute(loyalty.hold(5, 2, 50, 60 * SECOND)).committed().unwrap();
        engine.execute(loyalty.void(6, void.tx_id));
        engine.execute(loyalty.hold(7, 2, 10, SECOND)).committed().unwrap();
        let earn = engine.execute(loyalty.earn(8, 1, 77)).committed().unwrap();
        assert!(matches!(engine.execute(loyalty.reverse(9, earn.tx_id)), Response::Committed(_)));
        engine.execute(loyalty.transfer(10, 1, 2, 5));
        engine.execute(loyalty.transfer(11, 1, 0, 7));
        clock.advance(3 * SECOND); // the last hold expires
        engine.execute(loyalty.redeem(12, 2, 1));
        // The loyalty programme: a rule version, purchases settled, refunded, held, released
        // and failed, lots expired.
        let accounts = loyalty.define_programme(&engine);
        let mut rules = ledger_engine::loyalty::RuleSet::flat(1, 1);
        rules.purchases.pending = ledger_engine::loyalty::rules::PendingPoints::Held { days: 1 };
        engine.define_rules(rules, accounts, None).unwrap();
        let bought = |key, customer, receipt| {
            let purchase =
                loyalty.purchase_with_receipt(key, customer, (3, receipt), &[(1, 90, false)]);
            engine.execute(purchase).committed().unwrap().tx_id
        };
        let (first, second, third) = (bought(13, 1, "R"), bought(14, 2, "R"), bought(19, 1, "S"));
        engine.execute(loyalty.settle(15, first)).committed().unwrap();
        engine.execute(loyalty.refund_lines(16, first, &[(1, 30, false)])).committed().unwrap();
        engine.execute(loyalty.settle(20, third)).committed().unwrap();
        engine.execute(loyalty.refund_by_receipt(17, 1, (3, "S"), 10)).committed().unwrap();
        clock.advance(2 * 86_400 * SECOND); // the next turn releases the second purchase
        engine.execute(loyalty.fail(18, second)).committed().unwrap();
        // The partner exchange: a rate and a conversion (whose lot expires too).
        let partner = ledger_engine::testing::loyalty::Partner::define(&engine, &loyalty);
        engine.define_rate(partner.inbound(&loyalty, (3, 2), (2, 1)), None).unwrap();
        engine.execute(partner.credit(21, 1, 40)).committed().unwrap();
        let pair = (partner.asset, loyalty.pts);
        engine.execute(loyalty.convert(22, 1, pair, 7)).committed().unwrap();
        clock.advance(25 * 31 * 86_400 * SECOND); // every lot expires
        engine.execute(loyalty.member_query(1, 0));
        engine.snapshot_now().unwrap();
        engine.shutdown();

        let mut records = Vec::new();
        for shard in 0..2 {
            let wal = ShardPaths::new(dir.path(), shard).wal;
            reader::scan(&wal, &ScanOptions::all(), |record| {
                records.push((record.kind, record.payload().to_vec()));
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        let kinds: std::collections::BTreeSet<u16> =
            records.iter().map(|(kind, _)| *kind as u16).collect();
        assert_eq!(kinds, KINDS.into_iter().collect(), "every record kind is in the corpus");
        let snapshots = snapshot::list_snapshots(&ShardPaths::new(dir.path(), 0).snapshots);
        let (_, path) = snapshots.unwrap().into_iter().next().expect("a snapshot of shard 0");
        let snapshot = std::fs::read(path).unwrap();
        let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
        let config = ledger_engine::engine::ledger_config(
            &meta,
            ShardId::new(0).unwrap(),
            &Limits::test_min(),
        );
        Corpus { records, snapshot, config }
    })
}

/// A change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte (position modulo the length).
    Flip { at: usize, mask: u8 },
    /// Overwrite 8 bytes (or what is left) with a little-endian value.
    Set { at: usize, value: u64 },
    /// Keep only a prefix (fraction of the length, in 1/1000).
    Truncate { per_mille: u16 },
    /// Append bytes.
    Extend { bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(1 << 32),
        Just(1 << 40),
        any::<u64>(),
        0..300u64,
    ];
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        4 => (any::<usize>(), extreme).prop_map(|(at, value)| Mutation::Set { at, value }),
        1 => (0..1000u16).prop_map(|per_mille| Mutation::Truncate { per_mille }),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Extend { bytes }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::Flip { at, mask } if !bytes.is_empty() => {
            let len = bytes.len();
            bytes[at % len] ^= mask;
        }
        Mutation::Set { at, value } if !bytes.is_empty() => {
            let start = at % bytes.len();
            let end = (start + 8).min(bytes.len());
            bytes[start..end].copy_from_slice(&value.to_le_bytes()[..end - start]);
        }
        Mutation::Truncate { per_mille } => {
            bytes.truncate(bytes.len() * usize::from(*per_mille) / 1000);
        }
        Mutation::Extend { bytes: more } => bytes.extend_from_slice(more),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_records_decode_or_are_refused(
        pick in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let records = &corpus().records;
        let (kind, payload) = &records[pick % records.len()];
        let mut bytes = payload.clone();
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        let _ = decode_body(*kind, &bytes);
    }

    #[test]
    fn random_bytes_decode_or_are_refused_as_every_kind(
        kind in proptest::sample::select(&KINDS[..]),
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let kind = RecordKind::from_u16(kind).expect("a record kind");
        let _ = decode_body(kind, &bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_snapshot_bodies_decode_to_a_checked_state_or_are_refused(
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let corpus = corpus();
        let header = SnapshotHeader::decode(&corpus.snapshot).unwrap();
        let mut body = corpus.snapshot[SNAPSHOT_HEADER_BYTES..].to_vec();
        for mutation in &mutations {
            mutate(&mut body, mutation);
        }
        // The body as a writer with other ideas would have checksummed it.
        let decoded = Ledger::decode_state_version(corpus.config.clone(), &body, header.version);
        if let Ok(ledger) = decoded {
            let _ = ledger.check_invariants();
        }
    }

    #[test]
    fn mutated_snapshot_headers_decode_or_are_refused(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut header = corpus().snapshot[..SNAPSHOT_HEADER_BYTES].to_vec();
        for mutation in &mutations {
            mutate(&mut header, mutation);
        }
        let _ = SnapshotHeader::decode(&header);
    }
}

#[test]
fn the_unmutated_corpus_decodes() {
    let corpus = corpus();
    for (kind, payload) in &corpus.records {
        decode_body(*kind, payload).unwrap();
    }
    let header = SnapshotHeader::decode(&corpus.snapshot).unwrap();
    let body = &corpus.snapshot[SNAPSHOT_HEADER_BYTES..];
    let ledger = Ledger::decode_state_version(corpus.config.clone(), body, header.version).unwrap();
    ledger.check_invariants().unwrap();
    assert_eq!(ledger.lsn(), header.lsn);
}
