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

/// A UTC day (days since 1970-01-01) as YYYY-MM-DD.
fn date(day: u32) -> String {
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
        .routes(routes!(shards))
        .routes(routes!(snapshot))
        .routes(routes!(liability))
        .routes(routes!(rules))
        .routes(routes!(rates))
        .routes(routes!(openapi_document))
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
    let pos = state.pos.get().map(Arc::clone);
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
    params: Result<QueryParams<CustomerParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CustomerView>, ApiError> {
    caller.require(Role::Auditor)?;
    let customer: u64 = customer
        .parse()
        .map_err(|_| ApiError::bad_request(format!("customer {customer:?} is not a number")))?;
    let QueryParams(params) =
        params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
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
    let mut answers = ask_all(engine, commands).await?;
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
    Ok(Json(CustomerView { customer: customer.to_string(), shard, accounts, loyalty }))
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
    Ok(Json(
        engine
            .stats()
            .into_iter()
            .map(|s| ShardView {
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
    params: Result<QueryParams<LiabilityParams>, axum::extract::rejection::QueryRejection>,
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
