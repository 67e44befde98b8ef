//! The admin API's routes, each with its OpenAPI description (utoipa): the document at
//! `/v1/openapi.json` is generated from these, never kept by hand. Each route's `security`
//! names the least role that may call it; the handler checks the same (`Caller::require`), and
//! the auth-matrix test compares the two for every route of the document.
//!
//! Amounts are decimal strings: counters are 128-bit, beyond what JSON numbers carry exactly.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger_engine::ledger::account::{AccountId, Namespace};
use ledger_engine::loyalty::calendar::{civil_from_days, rfc3339};
use ledger_engine::{Command, Query, RejectCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ask::{ask_all, blocking};
use super::auth::Role;
use super::error::{ApiError, ErrorBody};
use super::{AdminState, Caller};

type Shared = State<Arc<AdminState>>;

/// Query parameters as given, or `400` with axum's reason.
type Params<P> = Result<QueryParams<P>, axum::extract::rejection::QueryRejection>;

/// A path's customer id and the query's parameters, or `400`.
fn customer_and<P>(customer: &str, params: Params<P>) -> Result<(u64, P), ApiError> {
    let customer = number(customer, "customer")?;
    let QueryParams(params) =
        params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    Ok((customer, params))
}

/// A path segment that must be a number, or `400`.
pub(super) fn number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("{what} {text:?} is not a number")))
}

/// A UTC day (days since 1970-01-01) as YYYY-MM-DD.
pub(super) fn date(day: u32) -> String {
    let date = civil_from_days(i64::from(day));
    format!("{:04}-{:02}-{:02}", date.year, date.month, date.day)
}

/// Every routed endpoint, with its OpenAPI description.
pub fn api() -> OpenApiRouter<Arc<AdminState>> {
    OpenApiRouter::with_openapi(openapi_base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(customer))
        .routes(routes!(history))
        .routes(routes!(transaction))
        .routes(routes!(shards))
        .routes(routes!(replica))
        .routes(routes!(snapshot))
        .routes(routes!(liability))
        .routes(routes!(rules))
        .routes(routes!(rates))
        .routes(routes!(openapi_document))
        .routes(routes!(super::writes::adjustment))
        .routes(routes!(super::writes::void_hold))
        .routes(routes!(super::writes::refund))
        .routes(routes!(super::writes::settle))
        .routes(routes!(super::writes::fail))
        .routes(routes!(super::writes::transfer))
        .routes(routes!(super::writes::conversion))
        .routes(routes!(super::programme::define_rules))
        .routes(routes!(super::programme::dry_run))
        .routes(routes!(super::programme::define_rate))
        .routes(routes!(super::programme::balance_check))
        .routes(routes!(super::settlement::import))
        .routes(routes!(super::terminals::list, super::terminals::create))
        .routes(routes!(super::terminals::disable))
        .routes(routes!(super::terminals::rotate))
}

/// This document (OpenAPI 3.1), generated from the handlers.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
async fn openapi_document(
    axum::Extension(document): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document.as_ref().clone())
}

fn openapi_base() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let mut openapi = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("ledgerd admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Operators, support staff and auditors: docs/admin-api.md. Each operation's \
                     bearer security scope names the least role that may call it.",
                ))
                .build(),
        )
        .build();
    let components = openapi.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    openapi
}

// ---- Health, readiness, metrics ----------------------------------------------------------

/// `/healthz` and `/readyz` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `alive` or `ready`.
    pub status: String,
}

/// The process is alive (it answers from the first moment, recovering or not).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "alive".to_string() })
}

/// The ledger is recovered and every shard accepts writes.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = Health),
        (status = 503, description = "recovering, or a shard stopped after an I/O error", body = ErrorBody),
    ))]
async fn readyz(State(state): Shared) -> Response {
    if state.ready() {
        return Json(Health { status: "ready".to_string() }).into_response();
    }
    match state.engine.get() {
        None => ApiError::not_ready().into_response(),
        Some(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shard_failed",
            "a shard stopped after an I/O error: restart ledgerd",
        )
        .into_response(),
    }
}

/// Prometheus metrics in the OpenMetrics text format (docs/admin-api.md, "Metrics").
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): Shared) -> Response {
    let engine = state.engine.get().map(Arc::clone);
    let pos = state.metrics.pos.get().map(Arc::clone);
    let metrics_state = Arc::clone(&state);
    let rendered = tokio::task::spawn_blocking(move || {
        metrics_state.metrics.render(pos.as_deref().map(|p| &p.stats), engine.as_deref())
    })
    .await;
    match rendered {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

// ---- Customers ---------------------------------------------------------------------------

/// Options of a customer read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustomerParams {
    /// Days ahead over which to count expiring points (0: today; at most 3,650).
    #[serde(default)]
    pub within_days: u16,
}

/// One of a customer's accounts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountBalance {
    /// `customer:<id>:<class>`.
    pub address: String,
    /// The asset's code.
    pub asset: String,
    /// Credits posted minus debits posted.
    pub posted: String,
    /// Debits reserved by open holds.
    pub pending_debits: String,
    /// Credits reserved (held purchases' points).
    pub pending_credits: String,
    /// What can be spent: posted minus pending debits.
    pub available: String,
}

/// A lot of points.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LotView {
    /// The transaction whose credit opened it.
    pub origin: String,
    /// `earned`, `bonus` or `transfer`.
    pub kind: String,
    /// It expires at 00:00 UTC of this day (YYYY-MM-DD).
    pub expires: String,
    /// Points left.
    pub remaining: String,
}

/// A member's loyalty state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoyaltyView {
    /// The tier the rules in force give the member now (0 = the first).
    pub tier: u8,
    /// Its name in the rules in force.
    pub tier_name: Option<String>,
    /// The tier their last purchase recorded.
    pub tier_recorded: u8,
    /// Purchase points in the tier window up to now.
    pub qualifying: String,
    /// Purchase points today and this month (UTC), for the caps.
    pub caps_used_day: String,
    /// See `caps_used_day`.
    pub caps_used_month: String,
    /// Lots held (the list shows at most 256).
    pub lot_count: usize,
    /// Lots, the earliest expiry first.
    pub lots: Vec<LotView>,
    /// Points in lots that expire within `within_days`.
    pub expiring: String,
    /// The `within_days` asked for.
    pub within_days: u16,
    /// Points open holds took out of the lots.
    pub held: String,
}

/// A customer as the admin API shows them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerView {
    /// The customer's id.
    pub customer: String,
    /// The shard that owns them.
    pub shard: u16,
    /// Their accounts that exist, one per customer class.
    pub accounts: Vec<AccountBalance>,
    /// Their loyalty state, once they have one.
    pub loyalty: Option<LoyaltyView>,
    /// Their open holds among their most recent 1,024 postings, newest first.
    pub open_holds: Vec<HoldItem>,
    /// Their purchases still refundable among their most recent 1,024 postings, newest first.
    pub recent_purchases: Vec<PurchaseItem>,
}

/// An open hold.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HoldItem {
    /// The hold's id.
    pub hold: String,
    /// The account it reserves from, and how much.
    pub account: String,
    /// See `account`.
    pub amount: String,
    /// When it expires if nobody captures or voids it (RFC 3339).
    pub expires_at: String,
}

/// A refundable purchase's lifecycle.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurchaseItem {
    /// The purchase's transaction id.
    pub tx_id: String,
    /// Where it stands, its spend and what of its basis was refunded, whether its points are
    /// held.
    #[serde(flatten)]
    pub lifecycle: LifecycleView,
}

fn lifecycle_view(entry: &ledger_engine::loyalty::purchases::Refundable) -> LifecycleView {
    LifecycleView {
        state: entry.state.name().to_string(),
        spend: entry.spend.to_string(),
        refunded: entry.refunded.to_string(),
        by_lines: entry.flags & ledger_engine::loyalty::purchases::Refundable::BY_LINES != 0,
        held: entry.held(),
    }
}

/// A customer's balances, tier, lots and expiring points.
#[utoipa::path(get, path = "/v1/customers/{customer}", tag = "customers",
    params(("customer" = u64, Path, description = "the customer's id"), CustomerParams),
    security(("bearer" = ["auditor"])),
    responses(
        (status = 200, description = "the customer", body = CustomerView),
        (status = 404, description = "no account and no loyalty state", body = ErrorBody),
    ))]
async fn customer(
    State(state): Shared,
    caller: Caller,
    Path(customer): Path<String>,
    params: Params<CustomerParams>,
) -> Result<Json<CustomerView>, ApiError> {
    caller.require(Role::Auditor)?;
    let (customer, params) = customer_and(&customer, params)?;
    if params.within_days > 3_650 {
        return Err(ApiError::bad_request("within_days must be at most 3650"));
    }
    let engine = state.engine()?;
    let registry = engine.registry();
    let classes: Vec<_> =
        registry.classes().iter().filter(|c| c.namespace == Namespace::Customer).collect();
    let mut commands: Vec<Command> = classes
        .iter()
        .map(|class| Command::Read(Query::Account(AccountId::new(class.id, customer))))
        .collect();
    commands.push(Command::Read(Query::Member { customer, within_days: params.within_days }));
    commands.push(Command::Read(Query::Activity { customer }));
    let mut answers = ask_all(engine, commands).await?;
    let activity = match answers.pop().expect("one answer per command") {
        ledger_engine::Response::Activity(activity) => activity,
        ledger_engine::Response::Rejected(code) => return Err(ApiError::rejected(code)),
        other => return Err(ApiError::internal(format!("an activity read answered {other:?}"))),
    };
    let member = answers.pop().expect("one answer per command");
    let mut accounts = Vec::new();
    for (class, answer) in classes.iter().zip(answers) {
        match answer {
            ledger_engine::Response::Account(view) => {
                let counters = view.counters;
                let id = AccountId::new(class.id, customer);
                accounts.push(AccountBalance {
                    address: registry
                        .address(id)
                        .map_or_else(|| format!("{id:?}"), |a| a.to_string()),
                    asset: registry
                        .asset(class.asset)
                        .map_or_else(|| class.asset.0.to_string(), |a| a.code.to_string()),
                    posted: counters.balance_posted().to_string(),
                    pending_debits: { counters.debits_pending }.to_string(),
                    pending_credits: { counters.credits_pending }.to_string(),
                    available: counters.balance_available().to_string(),
                });
            }
            ledger_engine::Response::Rejected(RejectCode::AccountNotFound) => {}
            ledger_engine::Response::Rejected(code) => return Err(ApiError::rejected(code)),
            other => return Err(ApiError::internal(format!("an account read answered {other:?}"))),
        }
    }
    let loyalty = match member {
        ledger_engine::Response::Member(view) => {
            let tier_name = engine
                .programme()
                .in_force(engine.now())
                .and_then(|version| version.rules.tiers.get(usize::from(view.tier)))
                .map(|tier| tier.name.clone());
            Some(LoyaltyView {
                tier: view.tier,
                tier_name,
                tier_recorded: view.tier_recorded,
                qualifying: view.qualifying.to_string(),
                caps_used_day: view.caps_used.day.to_string(),
                caps_used_month: view.caps_used.month.to_string(),
                lot_count: view.lot_count,
                lots: view
                    .lots
                    .iter()
                    .map(|lot| LotView {
                        origin: lot.origin.0.to_string(),
                        kind: lot.kind.name().to_string(),
                        expires: date(lot.expires_day),
                        remaining: lot.remaining.to_string(),
                    })
                    .collect(),
                expiring: view.expiring.to_string(),
                within_days: params.within_days,
                held: view.held.to_string(),
            })
        }
        ledger_engine::Response::Rejected(RejectCode::AccountNotFound) => None,
        ledger_engine::Response::Rejected(code) => return Err(ApiError::rejected(code)),
        other => return Err(ApiError::internal(format!("a member read answered {other:?}"))),
    };
    if accounts.is_empty() && loyalty.is_none() {
        return Err(ApiError::not_found(format!("customer {customer} has no account")));
    }
    let shard = engine.shard_of_customer(ledger_engine::CustomerId(customer)).index();
    let address =
        |id: AccountId| registry.address(id).map_or_else(|| format!("{id:?}"), |a| a.to_string());
    let open_holds = activity
        .holds
        .iter()
        .map(|(id, view)| HoldItem {
            hold: id.0.to_string(),
            account: address(view.posting.debit),
            amount: view.posting.amount.get().to_string(),
            expires_at: rfc3339(view.expires_at),
        })
        .collect();
    let recent_purchases = activity
        .purchases
        .iter()
        .map(|entry| PurchaseItem {
            tx_id: entry.id.0.to_string(),
            lifecycle: lifecycle_view(entry),
        })
        .collect();
    Ok(Json(CustomerView {
        customer: customer.to_string(),
        shard,
        accounts,
        loyalty,
        open_holds,
        recent_purchases,
    }))
}

// ---- Operations --------------------------------------------------------------------------

/// One shard's figures.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShardView {
    /// The shard.
    pub shard: u16,
    /// LSN of the last applied record.
    pub applied_lsn: u64,
    /// LSN up to which the WAL is durable.
    pub durable_lsn: u64,
    /// Records applied and not yet durable.
    pub queue_depth: u64,
    /// Whether it stopped after an I/O error.
    pub poisoned: bool,
    /// LSN of its last snapshot.
    pub snapshot_lsn: u64,
    /// When that snapshot was taken: the time of its last record (RFC 3339; absent: none).
    pub snapshot_time: Option<String>,
    /// Seconds since the last record the snapshot covers (0: it covers every applied record;
    /// absent: records and no snapshot).
    pub snapshot_age_seconds: Option<f64>,
    /// Records a restart would replay past the snapshot.
    pub records_since_snapshot: u64,
    /// Records appended.
    pub records: u64,
    /// Commit groups written.
    pub batches: u64,
    /// Mean records per commit group.
    pub batch_records_mean: f64,
    /// fdatasync calls.
    pub fdatasyncs: u64,
    /// Mean fdatasync latency, microseconds.
    pub fdatasync_mean_us: u64,
    /// WAL bytes written.
    pub wal_bytes: u64,
    /// Accounts.
    pub accounts: u64,
    /// Open holds.
    pub holds: u64,
    /// Point lots held by its members.
    pub lots: u64,
    /// Lot expiries recorded (one per member and turn).
    pub expiry_records: u64,
    /// The earliest day a lot still held expires (YYYY-MM-DD; absent: no lot).
    pub expiry_next_day: Option<String>,
    /// How long the earliest lot still held has been due (0: none due): the sweep's lag.
    pub expiry_overdue_seconds: f64,
    /// The sweep's last turn had more due than it takes in a turn.
    pub expiry_behind: bool,
    /// Commands refused, and refused busy.
    pub rejected: u64,
    /// See `rejected`.
    pub busy: u64,
}

/// Per-shard figures.
#[utoipa::path(get, path = "/v1/ops/shards", tag = "operations",
    security(("bearer" = ["auditor"])),
    responses((status = 200, description = "every shard", body = Vec<ShardView>)))]
async fn shards(State(state): Shared, caller: Caller) -> Result<Json<Vec<ShardView>>, ApiError> {
    caller.require(Role::Auditor)?;
    let engine = state.engine()?;
    let now = engine.now();
    Ok(Json(
        engine
            .stats()
            .into_iter()
            .map(|s| ShardView {
                snapshot_time: (s.last_snapshot_created_nanos > 0)
                    .then(|| rfc3339(ledger_engine::Timestamp(s.last_snapshot_created_nanos))),
                snapshot_age_seconds: s.snapshot_age(now).map(|age| age.as_secs_f64()),
                records_since_snapshot: s.applied_lsn.saturating_sub(s.last_snapshot_lsn),
                lots: s.lots,
                expiry_records: s.expiry_records,
                expiry_next_day: s.expiry_next_day.map(date),
                expiry_overdue_seconds: s.expiry_overdue(now).as_secs_f64(),
                expiry_behind: s.expiry_behind,
                shard: s.shard,
                applied_lsn: s.applied_lsn,
                durable_lsn: s.durable_lsn,
                queue_depth: s.applied_lsn.saturating_sub(s.durable_lsn),
                poisoned: s.poisoned,
                snapshot_lsn: s.last_snapshot_lsn,
                records: s.records,
                batches: s.batches,
                batch_records_mean: s.records as f64 / s.batches.max(1) as f64,
                fdatasyncs: s.syncs,
                fdatasync_mean_us: s.sync_nanos_total / s.syncs.max(1) / 1_000,
                wal_bytes: s.wal_bytes,
                accounts: s.accounts,
                holds: s.holds,
                rejected: s.rejected,
                busy: s.busy,
            })
            .collect(),
    ))
}

/// One shard's replication to PostgreSQL.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplicaShardView {
    /// The shard.
    pub shard: u16,
    /// `starting`, `running`, `retrying` (PostgreSQL failed: retried with backoff) or
    /// `refused` (the database holds another ledger or history: stopped).
    pub state: String,
    /// The replica's watermark: the last record whose rows are in PostgreSQL.
    pub lsn: u64,
    /// The shard's durable LSN.
    pub durable_lsn: u64,
    /// Durable records not yet in PostgreSQL.
    pub lag_records: u64,
    /// Seconds since the last record in PostgreSQL, while records are missing (0: none).
    pub lag_seconds: f64,
    /// Records and postings written, failed attempts (since start).
    pub records: u64,
    /// See `records`.
    pub postings: u64,
    /// See `records`.
    pub failures: u64,
}

/// The reporting replica.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplicaView {
    /// Whether a replica is configured (`--replica-url`).
    pub configured: bool,
    /// Per shard (none without a replica).
    pub shards: Vec<ReplicaShardView>,
}

/// The reporting replica's progress per shard: state, watermark, lag.
#[utoipa::path(get, path = "/v1/ops/replica", tag = "operations",
    security(("bearer" = ["auditor"])),
    responses((status = 200, description = "per shard", body = ReplicaView)))]
async fn replica(State(state): Shared, caller: Caller) -> Result<Json<ReplicaView>, ApiError> {
    use std::sync::atomic::Ordering;
    caller.require(Role::Auditor)?;
    let engine = state.engine()?;
    let Some(replica) = state.replica() else {
        return Ok(Json(ReplicaView { configured: false, shards: Vec::new() }));
    };
    let now = engine.now();
    let shards = engine
        .stats()
        .iter()
        .zip(replica)
        .map(|(stats, figures)| {
            let (lag_records, lag) = figures.lag(stats.durable_lsn, now);
            ReplicaShardView {
                shard: stats.shard,
                state: figures.state().name().to_string(),
                lsn: figures.lsn.load(Ordering::Relaxed),
                durable_lsn: stats.durable_lsn,
                lag_records,
                lag_seconds: lag.as_secs_f64(),
                records: figures.records.load(Ordering::Relaxed),
                postings: figures.postings.load(Ordering::Relaxed),
                failures: figures.failures.load(Ordering::Relaxed),
            }
        })
        .collect();
    Ok(Json(ReplicaView { configured: true, shards }))
}

/// A snapshot taken.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTaken {
    /// The LSN each shard's snapshot covers, by shard.
    pub lsns: Vec<u64>,
}

/// Takes a snapshot of every shard now and waits for them.
#[utoipa::path(post, path = "/v1/ops/snapshot", tag = "operations",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "written", body = SnapshotTaken),
        (status = 500, description = "a snapshot failed", body = ErrorBody),
    ))]
async fn snapshot(State(state): Shared, caller: Caller) -> Result<Json<SnapshotTaken>, ApiError> {
    caller.require(Role::Admin)?;
    let engine = state.engine()?;
    let lsns =
        blocking(engine, |engine| engine.snapshot_now()).await?.map_err(ApiError::internal)?;
    Ok(Json(SnapshotTaken { lsns: lsns.into_iter().map(|lsn| lsn.0).collect() }))
}

/// Options of the liability figures.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiabilityParams {
    /// Days of flows and of the breakage rate, ending today (1..=400; default 30).
    pub days: Option<u16>,
}

/// What members hold of one customer class.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassTotal {
    /// `customer:<id>:<class>` with `<id>` left out: the class's name.
    pub class: String,
    /// Its asset.
    pub asset: String,
    /// Posted balance summed over its accounts (below zero: what members owe).
    pub total: String,
}

/// One day's points flows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayFlowsView {
    /// The UTC day (YYYY-MM-DD).
    pub day: String,
    /// Points issued, redeemed, expired and refunded that day.
    pub issued: String,
    /// See `issued`.
    pub redeemed: String,
    /// See `issued`.
    pub expired: String,
    /// See `issued`.
    pub refunded: String,
}

/// The programme's liability and breakage (docs/loyalty.md, "Liability and breakage").
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiabilityView {
    /// Each customer class's total.
    pub classes: Vec<ClassTotal>,
    /// Points outstanding (the points class's total).
    pub points_outstanding: String,
    /// Their money value at the point value in force, in minor units.
    pub points_value_minor_units: String,
    /// Points flows per day over the window, oldest first (days without flows left out).
    pub flows: Vec<DayFlowsView>,
    /// Expired / issued over the window, in millionths; none when nothing was issued.
    pub breakage_ppm: Option<u64>,
    /// Points in lots by the month they expire in (YYYY-MM).
    pub by_expiry_month: std::collections::BTreeMap<String, String>,
    /// Members per tier (index: tier).
    pub tiers: Vec<u64>,
}

/// The programme's liability, flows, breakage rate, expiry months and tiers, summed over the
/// shards.
#[utoipa::path(get, path = "/v1/ops/liability", tag = "operations",
    params(LiabilityParams),
    security(("bearer" = ["auditor"])),
    responses((status = 200, description = "the figures", body = LiabilityView)))]
async fn liability(
    State(state): Shared,
    caller: Caller,
    params: Params<LiabilityParams>,
) -> Result<Json<LiabilityView>, ApiError> {
    caller.require(Role::Auditor)?;
    let QueryParams(params) =
        params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let days = params.days.unwrap_or(30);
    if !(1..=400).contains(&days) {
        return Err(ApiError::bad_request("days must be 1..=400"));
    }
    let engine = state.engine()?;
    let figures =
        blocking(engine, |engine| engine.liability()).await?.map_err(ApiError::rejected)?;
    let registry = engine.registry();
    let now = engine.now();
    let programme = engine.programme();
    let version = programme.in_force(now);
    let points_class = programme.points_class();
    let points = points_class.map_or(0, |class| figures.class_total(class));
    let value = version.map_or(0, |version| {
        let points = u128::try_from(points).unwrap_or(0);
        version.rules.purchases.point_value.money(points)
    });
    let today = ledger_engine::loyalty::calendar::day_index(now);
    let first = today.saturating_sub(u32::from(days) - 1);
    Ok(Json(LiabilityView {
        classes: figures
            .classes
            .iter()
            .map(|(class, total)| {
                let def = registry.class(*class);
                ClassTotal {
                    class: def.map_or_else(|| class.0.to_string(), |d| d.name.to_string()),
                    asset: def
                        .and_then(|d| registry.asset(d.asset))
                        .map_or_else(String::new, |a| a.code.to_string()),
                    total: total.to_string(),
                }
            })
            .collect(),
        points_outstanding: points.to_string(),
        points_value_minor_units: value.to_string(),
        flows: figures
            .flows
            .days()
            .filter(|(day, _)| (first..=today).contains(day))
            .map(|(day, flows)| DayFlowsView {
                day: date(day),
                issued: flows.issued.to_string(),
                redeemed: flows.redeemed.to_string(),
                expired: flows.expired.to_string(),
                refunded: flows.refunded.to_string(),
            })
            .collect(),
        breakage_ppm: ledger_engine::loyalty::liability::breakage_ppm(&figures.flows, first, today),
        by_expiry_month: figures
            .by_expiry_month
            .iter()
            .map(|(month, points)| {
                (format!("{:04}-{:02}", month / 12, month % 12 + 1), points.to_string())
            })
            .collect(),
        tiers: figures.tiers.to_vec(),
    }))
}

// ---- Rules and rates ---------------------------------------------------------------------

/// A rule version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RulesVersionView {
    /// Its number.
    pub version: u32,
    /// The effective time asked for (RFC 3339), none for "at once".
    pub requested_at: Option<String>,
    /// When it took effect (RFC 3339, on shard 0's clock for "at once").
    pub effective_at: String,
    /// Whether it is the version in force now.
    pub in_force: bool,
    /// Points per `base_per_minor_units`.
    pub base_points: u32,
    /// See `base_points`.
    pub base_per_minor_units: u64,
    /// Tier names, the first at threshold 0.
    pub tiers: Vec<String>,
    /// Days a purchase stays refundable.
    pub refund_days: u16,
}

/// Every rule version, in version order.
#[utoipa::path(get, path = "/v1/rules", tag = "programme",
    security(("bearer" = ["auditor"])),
    responses((status = 200, description = "the versions", body = Vec<RulesVersionView>)))]
async fn rules(
    State(state): Shared,
    caller: Caller,
) -> Result<Json<Vec<RulesVersionView>>, ApiError> {
    caller.require(Role::Auditor)?;
    let engine = state.engine()?;
    let programme = engine.programme();
    let now = engine.now();
    let in_force = programme.in_force(now).map(|version| version.version);
    Ok(Json(
        programme
            .versions()
            .iter()
            .map(|version| RulesVersionView {
                version: version.version,
                requested_at: (version.requested_at.0 != 0).then(|| rfc3339(version.requested_at)),
                effective_at: rfc3339(version.effective_at),
                in_force: in_force == Some(version.version),
                base_points: version.rules.base.points,
                base_per_minor_units: version.rules.base.per_minor_units,
                tiers: version.rules.tiers.iter().map(|tier| tier.name.clone()).collect(),
                refund_days: version.rules.purchases.refund_days,
            })
            .collect(),
    ))
}

/// One side of an exchange rate.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RateSideView {
    /// The asset's code.
    pub asset: String,
    /// The exchange fund in points.
    pub fund: String,
    /// The exchange fund in the liability asset.
    pub money_fund: String,
    /// A point's value: minor units of the liability asset per `value_points` points.
    pub value_minor_units: u64,
    /// See `value_minor_units`.
    pub value_points: u64,
}

/// An exchange rate.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RateView {
    /// Its version.
    pub version: u32,
    /// The side converted from.
    pub from: RateSideView,
    /// The side converted to.
    pub to: RateSideView,
    /// Points of `to` per `denominator` points of `from`.
    pub numerator: u64,
    /// See `numerator`.
    pub denominator: u64,
    /// The liability asset's code.
    pub liability_asset: String,
    /// The effective time asked for (RFC 3339), none for "at once".
    pub requested_at: Option<String>,
    /// When it took effect.
    pub effective_at: String,
}

/// Every exchange rate, in version order.
#[utoipa::path(get, path = "/v1/rates", tag = "programme",
    security(("bearer" = ["auditor"])),
    responses((status = 200, description = "the rates", body = Vec<RateView>)))]
async fn rates(State(state): Shared, caller: Caller) -> Result<Json<Vec<RateView>>, ApiError> {
    caller.require(Role::Auditor)?;
    let engine = state.engine()?;
    let registry = engine.registry();
    let asset = |id: ledger_engine::ledger::account::AssetId| {
        registry.asset(id).map_or_else(|| id.0.to_string(), |a| a.code.to_string())
    };
    let account =
        |id: AccountId| registry.address(id).map_or_else(|| format!("{id:?}"), |a| a.to_string());
    let side = |side: &ledger_engine::loyalty::exchange::ExchangeSide| RateSideView {
        asset: asset(side.asset),
        fund: account(side.fund),
        money_fund: account(side.money),
        value_minor_units: side.value.minor_units,
        value_points: side.value.points,
    };
    Ok(Json(
        engine
            .rates()
            .versions()
            .iter()
            .map(|rate| RateView {
                version: rate.version,
                from: side(&rate.terms.from),
                to: side(&rate.terms.to),
                numerator: rate.terms.numerator,
                denominator: rate.terms.denominator,
                liability_asset: asset(rate.terms.money),
                requested_at: (rate.requested_at.0 != 0).then(|| rfc3339(rate.requested_at)),
                effective_at: rfc3339(rate.effective_at),
            })
            .collect(),
    ))
}

// ---- History and transactions ------------------------------------------------------------

/// What the history answers say of older entries.
const RETENTION: &str = "ledgerd keeps each shard's most recent postings to customer accounts \
    in memory (history_entries_max a shard); older ones are in the WAL (ledger-wal) and, with \
    replication, in the PostgreSQL replica (docs/admin-api.md, \"History\")";

/// Options of a history page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Entries per page, 1..=256 (default 50).
    pub limit: Option<u16>,
    /// The `next_cursor` of the previous page (with the same filters).
    pub cursor: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only entries before this time (RFC 3339).
    pub to: Option<String>,
    /// Only entries of this kind (`purchase`, `redeem`, `adjustment`, `reversal`, `transfer`,
    /// `refund`, `expiry`, `exchange`, `generic`).
    pub kind: Option<String>,
    /// Only the customer's account of this class (`points`, `cashback` …).
    pub class: Option<String>,
}

/// One posting seen from a customer account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntryView {
    /// The transaction.
    pub tx_id: String,
    /// When it was applied (RFC 3339).
    pub time: String,
    /// Its kind.
    pub kind: String,
    /// The customer account.
    pub account: String,
    /// The other account of the posting.
    pub counterparty: String,
    /// The amount.
    pub amount: String,
    /// `credit` or `debit`, for `account`.
    pub direction: String,
    /// `posted`, `held` (reserved by a hold) or `released` (a hold's reservation ended).
    pub effect: String,
    /// Its position among its transaction's postings, and how many there are.
    pub posting: u8,
    /// See `posting`.
    pub postings: u8,
    /// Whether `reverse` may take it back, and whether it was.
    pub reversible: bool,
    /// See `reversible`.
    pub reversed: bool,
}

/// A page of a customer's history, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    /// The entries.
    pub entries: Vec<HistoryEntryView>,
    /// The next (older) page, or none.
    pub next_cursor: Option<String>,
    /// Whether the customer has older entries that this server no longer holds in memory.
    pub older_entries_elsewhere: bool,
    /// Where older history is found.
    pub retention: String,
}

fn entry_view(
    registry: &ledger_engine::ledger::registry::Registry,
    entry: &ledger_engine::ledger::history::HistoryEntry,
) -> HistoryEntryView {
    use ledger_engine::ledger::history::HistoryEntry as Entry;
    let address =
        |id: AccountId| registry.address(id).map_or_else(|| format!("{id:?}"), |a| a.to_string());
    HistoryEntryView {
        tx_id: entry.tx_id.0.to_string(),
        time: rfc3339(entry.timestamp),
        kind: entry.kind.to_string(),
        account: address(entry.account),
        counterparty: address(entry.counterparty),
        amount: entry.amount.to_string(),
        direction: if entry.has(Entry::CREDIT) { "credit" } else { "debit" }.to_string(),
        effect: if entry.has(Entry::HOLD) {
            "held"
        } else if entry.has(Entry::RELEASE) {
            "released"
        } else {
            "posted"
        }
        .to_string(),
        posting: entry.posting,
        postings: entry.postings,
        reversible: entry.has(Entry::REVERSIBLE),
        reversed: entry.has(Entry::REVERSED),
    }
}

/// The cursor of a page: the ring sequence to resume below, bound to the request's customer
/// and filters by a check (a cursor of another query, or edited, is refused).
fn cursor_check(customer: u64, params: &HistoryParams, before: u64) -> [u8; 8] {
    use sha2::Digest;
    let text = format!(
        "{customer}|{:?}|{:?}|{:?}|{:?}|{before}",
        params.from, params.to, params.kind, params.class
    );
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..8].try_into().expect("8 bytes")
}

fn encode_cursor(customer: u64, params: &HistoryParams, before: u64) -> String {
    let mut bytes = before.to_be_bytes().to_vec();
    bytes.extend_from_slice(&cursor_check(customer, params, before));
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_cursor(customer: u64, params: &HistoryParams, cursor: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_request("the cursor is not one this query returned");
    if cursor.len() != 32 || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&cursor[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let before = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    if bytes[8..] != cursor_check(customer, params, before) {
        return Err(bad());
    }
    Ok(before)
}

/// The transaction kind named `name` (the named kinds are the first few numbers).
fn tx_kind(name: &str) -> Option<ledger_engine::TxKind> {
    (0..64).map(ledger_engine::TxKind).find(|kind| kind.name() == Some(name))
}

/// A customer's history, newest first, by pages whose cursors stay valid while writes continue.
#[utoipa::path(get, path = "/v1/customers/{customer}/history", tag = "customers",
    params(("customer" = u64, Path, description = "the customer's id"), HistoryParams),
    security(("bearer" = ["auditor"])),
    responses(
        (status = 200, description = "a page", body = HistoryView),
        (status = 400, description = "a bad cursor, time, kind, class or limit", body = ErrorBody),
    ))]
async fn history(
    State(state): Shared,
    caller: Caller,
    Path(customer): Path<String>,
    params: Params<HistoryParams>,
) -> Result<Json<HistoryView>, ApiError> {
    caller.require(Role::Auditor)?;
    let (customer, params) = customer_and(&customer, params)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=256).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..=256"));
    }
    let time =
        |text: &Option<String>, name: &str| -> Result<Option<ledger_engine::Timestamp>, ApiError> {
            text.as_deref()
                .map(|text| {
                    ledger_engine::loyalty::rules_file::parse_timestamp(text)
                        .map_err(|error| ApiError::bad_request(format!("{name}: {error}")))
                })
                .transpose()
        };
    let engine = state.engine()?;
    let registry = engine.registry();
    let class = match &params.class {
        Some(name) => {
            let name = ledger_engine::ledger::account::Name::class(name)
                .map_err(|error| ApiError::bad_request(format!("class: {error}")))?;
            Some(
                registry
                    .class_by_name(Namespace::Customer, &name)
                    .ok_or_else(|| ApiError::bad_request(format!("no customer class {name}")))?
                    .id,
            )
        }
        None => None,
    };
    let kind = match &params.kind {
        Some(name) => Some(
            tx_kind(name)
                .ok_or_else(|| ApiError::bad_request(format!("no transaction kind {name:?}")))?,
        ),
        None => None,
    };
    let filter = ledger_engine::ledger::pages::HistoryFilter {
        from: time(&params.from, "from")?,
        to: time(&params.to, "to")?,
        kind,
        class,
    };
    let before =
        params.cursor.as_deref().map(|c| decode_cursor(customer, &params, c)).transpose()?;
    let query = Query::HistoryPage { customer, before, limit, filter };
    let page = match super::ask::ask(engine, Command::Read(query)).await? {
        ledger_engine::Response::HistoryPage(page) => page,
        ledger_engine::Response::Rejected(code) => return Err(ApiError::rejected(code)),
        other => return Err(ApiError::internal(format!("a history read answered {other:?}"))),
    };
    Ok(Json(HistoryView {
        entries: page.entries.iter().map(|(_, entry)| entry_view(&registry, entry)).collect(),
        next_cursor: page.next_before.map(|before| encode_cursor(customer, &params, before)),
        older_entries_elsewhere: page.truncated,
        retention: RETENTION.to_string(),
    }))
}

/// A purchase's earning, as recorded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurchaseView {
    /// The member.
    pub customer: String,
    /// The store and the receipt.
    pub store: u32,
    /// See `store`.
    pub receipt: String,
    /// The rule version that priced it.
    pub rules_version: u32,
    /// The member's tier before and after it, by name.
    pub tier_before: String,
    /// See `tier_before`.
    pub tier_after: String,
    /// What it earned and why.
    #[serde(flatten)]
    pub earning: EarningView,
}

/// What a purchase earned, component by component (docs/loyalty.md, "Explain").
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EarningView {
    /// Base points, category extra, tier extra, each promotion's points (by name), cut by caps.
    pub base: String,
    /// See `base`.
    pub category: String,
    /// See `base`.
    pub tier_points: String,
    /// See `base`.
    pub promotions: Vec<(String, String)>,
    /// See `base`.
    pub cap_cut: String,
    /// Points credited as earned, as bonus, and cashback.
    pub earned: String,
    /// See `earned`.
    pub bonus: String,
    /// See `earned`.
    pub cashback: String,
}

impl EarningView {
    /// From a priced outcome's components (`base, category, tier, cap_cut, earned, bonus,
    /// cashback`) and its promotions by name.
    pub fn new(components: [u64; 7], promotions: Vec<(String, String)>) -> EarningView {
        let [base, category, tier_points, cap_cut, earned, bonus, cashback] =
            components.map(|value| value.to_string());
        EarningView { base, category, tier_points, promotions, cap_cut, earned, bonus, cashback }
    }
}

/// A purchase's lifecycle.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LifecycleView {
    /// `pending`, `settled`, `partly_refunded`, `refunded` or `failed`.
    pub state: String,
    /// Its spend, and how much of its basis was refunded.
    pub spend: String,
    /// See `spend`.
    pub refunded: String,
    /// Whether it was refunded by lines (the basis is then its weighted spend).
    pub by_lines: bool,
    /// Whether its points are still held.
    pub held: bool,
}

/// A transaction as the admin API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransactionView {
    /// Its id.
    pub tx_id: String,
    /// The shard that wrote it.
    pub shard: u16,
    /// Its postings to customer accounts, as the history holds them.
    pub postings: Vec<HistoryEntryView>,
    /// For a purchase the shard still explains: what it earned and why.
    pub purchase: Option<PurchaseView>,
    /// For a purchase still refundable: where it stands.
    pub lifecycle: Option<LifecycleView>,
    /// Where older transactions are found.
    pub retention: String,
}

/// A transaction by id: its postings to customer accounts, the earning explanation and the
/// lifecycle of a purchase, while the shard remembers them.
#[utoipa::path(get, path = "/v1/transactions/{tx}", tag = "transactions",
    params(("tx" = u64, Path, description = "the transaction id")),
    security(("bearer" = ["auditor"])),
    responses(
        (status = 200, description = "the transaction", body = TransactionView),
        (status = 404, description = "not remembered (see retention)", body = ErrorBody),
    ))]
async fn transaction(
    State(state): Shared,
    caller: Caller,
    Path(tx): Path<String>,
) -> Result<Json<TransactionView>, ApiError> {
    caller.require(Role::Auditor)?;
    let id = ledger_engine::TxId(number(&tx, "transaction")?);
    let engine = state.engine()?;
    if id.shard() >= engine.shard_count() {
        return Err(ApiError::not_found(format!("no transaction {tx}")));
    }
    let commands = vec![
        Command::Read(Query::Transaction { tx: id }),
        Command::Read(Query::Explain { tx: id }),
        Command::Read(Query::Purchase { tx: id }),
    ];
    let answers = ask_all(engine, commands).await?;
    let registry = engine.registry();
    let postings = match &answers[0] {
        ledger_engine::Response::History(entries) => {
            entries.iter().map(|entry| entry_view(&registry, entry)).collect()
        }
        _ => Vec::new(),
    };
    let purchase = match &answers[1] {
        ledger_engine::Response::Explanation(explanation) => {
            let purchase = &explanation.purchase;
            let outcome = &purchase.outcome;
            Some(PurchaseView {
                customer: purchase.customer.to_string(),
                store: purchase.header.metadata.store,
                receipt: purchase.header.metadata.receipt.as_str().to_string(),
                rules_version: outcome.rules_version,
                tier_before: explanation.tier_before.clone(),
                tier_after: explanation.tier_after.clone(),
                earning: EarningView::new(
                    [
                        outcome.base,
                        outcome.category,
                        outcome.tier_points,
                        outcome.cap_cut,
                        outcome.earned,
                        outcome.bonus,
                        outcome.cashback,
                    ],
                    explanation
                        .promotions
                        .iter()
                        .map(|p| (p.name.clone(), p.points.to_string()))
                        .collect(),
                ),
            })
        }
        _ => None,
    };
    let lifecycle = match &answers[2] {
        ledger_engine::Response::Purchase(entry) => Some(lifecycle_view(entry)),
        _ => None,
    };
    if postings.is_empty() && purchase.is_none() && lifecycle.is_none() {
        return Err(ApiError::not_found(format!("no transaction {tx} in this server's memory")));
    }
    Ok(Json(TransactionView {
        tx_id: id.0.to_string(),
        shard: id.shard(),
        postings,
        purchase,
        lifecycle,
        retention: RETENTION.to_string(),
    }))
}
