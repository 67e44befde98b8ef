//! The admin API's programme routes: new rule versions and exchange rates (definitions,
//! recorded on every shard), a dry run of a rule set against a sample basket, and the global
//! sum-of-balances check. Docs: docs/admin-api.md, "Programme".
//!
//! Definitions are idempotent by content (the same rules or rate again answers the existing
//! version), so they need no `Idempotency-Key`; who asked is in the request log.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ledger_engine::DefineError;
use ledger_engine::ledger::account::{AccountAddress, AccountId, AssetId, Namespace};
use ledger_engine::loyalty::exchange::{ExchangeSide, RateTerms};
use ledger_engine::loyalty::pricing::{CapsUsed, Line, price};
use ledger_engine::loyalty::rules::PointValue;
use ledger_engine::loyalty::rules_file;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ask::blocking;
use super::auth::Role;
use super::error::{ApiError, ErrorBody};
use super::writes::Body;
use super::{AdminState, Caller};

type Shared = State<Arc<AdminState>>;

fn refused(error: DefineError) -> ApiError {
    match error {
        DefineError::Conflict(message) => {
            ApiError::new(StatusCode::CONFLICT, "definition_conflict", message)
        }
        DefineError::Refused { code, .. } => ApiError::rejected(code),
        other => ApiError::internal(other),
    }
}

/// A definition recorded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Defined {
    /// The version's number.
    pub version: u32,
    /// Whether it is new (false: the same one existed).
    pub new: bool,
}

/// A rule file, as `ledgerd --rules` reads it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesBody {
    /// The rule file's TOML text (docs/loyalty.md, "Rule files"), its `effective_at`
    /// included.
    pub rules: String,
}

fn parse_rules(text: &str) -> Result<rules_file::RulesFile, ApiError> {
    rules_file::parse(text).map_err(|error| match error.line {
        0 => ApiError::bad_request(format!("rules: {}", error.message)),
        line => ApiError::bad_request(format!("rules, line {line}: {}", error.message)),
    })
}

/// Records a new rule version (at its file's `effective_at`, or at once); the same rules
/// again answer the existing version.
#[utoipa::path(post, path = "/v1/rules", tag = "programme",
    request_body = RulesBody,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "recorded, or the same version existed", body = Defined),
        (status = 400, description = "the rule file is refused (line and reason)", body = ErrorBody),
        (status = 409, description = "another version takes effect at that time, or it is past", body = ErrorBody),
    ))]
pub async fn define_rules(
    State(state): Shared,
    caller: Caller,
    body: Result<Body<RulesBody>, ApiError>,
) -> Result<Json<Defined>, ApiError> {
    caller.require(Role::Admin)?;
    let Body(body) = body?;
    let file = parse_rules(&body.rules)?;
    let engine = state.engine()?;
    let accounts =
        engine.programme().versions().last().map(|version| version.accounts).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rules_not_in_force",
                "the programme has no version to take its accounts from",
            )
        })?;
    let (version, new) = blocking(engine, move |engine| {
        engine.define_rules(file.rules, accounts, file.effective_at)
    })
    .await?
    .map_err(refused)?;
    Ok(Json(Defined { version, new }))
}

/// A sample purchase to price.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunBody {
    /// A rule file's TOML text; the version in force when absent.
    pub rules: Option<String>,
    /// The basket: 1..=32 lines.
    pub lines: Vec<super::writes::LineBody>,
    /// The store (0: none).
    #[serde(default)]
    pub store: u32,
    /// The member's tier, by its index (0: the first).
    #[serde(default)]
    pub tier: u8,
    /// When the purchase is made (RFC 3339); now when absent.
    pub at: Option<String>,
    /// Points the member already earned that day and that month, for the caps.
    #[serde(default)]
    pub used_day: u64,
    /// See `used_day`.
    #[serde(default)]
    pub used_month: u64,
}

/// What a sample purchase would earn.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DryRunResult {
    /// Eligible spend (lines neither excluded by the till nor by a category).
    pub eligible: String,
    /// What it would earn and why.
    #[serde(flatten)]
    pub earning: super::routes::EarningView,
}

/// Prices a sample basket with a rule set (given, or the version in force), recording
/// nothing.
#[utoipa::path(post, path = "/v1/rules/dry-run", tag = "programme",
    request_body = DryRunBody,
    security(("bearer" = ["auditor"])),
    responses(
        (status = 200, description = "what it would earn", body = DryRunResult),
        (status = 400, description = "a refused rule file or basket", body = ErrorBody),
    ))]
pub async fn dry_run(
    State(state): Shared,
    caller: Caller,
    body: Result<Body<DryRunBody>, ApiError>,
) -> Result<Json<DryRunResult>, ApiError> {
    caller.require(Role::Auditor)?;
    let Body(body) = body?;
    let engine = state.engine()?;
    let at = match &body.at {
        Some(text) => rules_file::parse_timestamp(text)
            .map_err(|e| ApiError::bad_request(format!("at: {e}")))?,
        None => engine.now(),
    };
    let rules = match &body.rules {
        Some(text) => parse_rules(text)?.rules,
        None => {
            engine.programme().in_force(at).map(|version| (*version.rules).clone()).ok_or_else(
                || {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "rules_not_in_force",
                        "no rule version is in force at that time",
                    )
                },
            )?
        }
    };
    if body.lines.is_empty() || body.lines.len() > 32 {
        return Err(ApiError::bad_request("a basket has 1 to 32 lines"));
    }
    if usize::from(body.tier) >= rules.tiers.len() {
        return Err(ApiError::bad_request(format!("tier must be below {}", rules.tiers.len())));
    }
    let mut lines = Vec::with_capacity(body.lines.len());
    for line in &body.lines {
        let amount =
            line.amount.parse::<u64>().ok().filter(|amount| *amount > 0).ok_or_else(|| {
                ApiError::bad_request("a line's amount is a whole number from 1, as a string")
            })?;
        lines.push(Line { category: line.category, amount, excluded: line.excluded });
    }
    let used = CapsUsed { day: body.used_day, month: body.used_month };
    let breakdown = price(&rules, &lines, body.store, at, body.tier, used)
        .map_err(|error| ApiError::bad_request(format!("basket: {error:?}")))?;
    let promotions = breakdown
        .promotions
        .iter()
        .map(|p| {
            let name = rules
                .promotions
                .get(usize::from(p.promotion))
                .map_or_else(String::new, |p| p.name.clone());
            (name, p.points.to_string())
        })
        .collect();
    let b = &breakdown;
    let components = [b.base, b.category, b.tier_points, b.cap_cut, b.earned, b.bonus, b.cashback];
    Ok(Json(DryRunResult {
        eligible: breakdown.eligible_spend.to_string(),
        earning: super::routes::EarningView::new(components, promotions),
    }))
}

/// One side of a rate, by names.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateSideBody {
    /// The asset's code.
    pub asset: String,
    /// The customer class members hold it in (`points`, `partner_a` …).
    pub customer_class: String,
    /// The exchange fund in points (`house:exchange_partner_a` …).
    pub fund: String,
    /// The exchange fund in the liability asset (`partner:7:exchange` …).
    pub money_fund: String,
    /// A point's value: minor units of the liability asset per `value_points` points.
    pub value_minor_units: u64,
    /// See `value_minor_units`.
    pub value_points: u64,
}

/// A rate of the partner exchange.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateBody {
    /// The side converted from.
    pub from: RateSideBody,
    /// The side converted to.
    pub to: RateSideBody,
    /// Points of `to` per `denominator` points of `from` (1..=10^9 each).
    pub numerator: u64,
    /// See `numerator`.
    pub denominator: u64,
    /// The liability asset's code (`USD` …).
    pub liability_asset: String,
    /// When it takes effect (RFC 3339); at once when absent.
    pub effective_at: Option<String>,
}

/// Records a rate of the partner exchange (docs/loyalty.md, "Partner exchange").
#[utoipa::path(post, path = "/v1/rates", tag = "programme",
    request_body = RateBody,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "recorded, or the same rate existed", body = Defined),
        (status = 400, description = "an unknown asset, class or account", body = ErrorBody),
        (status = 409, description = "refused: same asset, terms out of range, wrong accounts, a time taken or past", body = ErrorBody),
    ))]
pub async fn define_rate(
    State(state): Shared,
    caller: Caller,
    body: Result<Body<RateBody>, ApiError>,
) -> Result<Json<Defined>, ApiError> {
    caller.require(Role::Admin)?;
    let Body(body) = body?;
    let engine = state.engine()?;
    let registry = engine.registry();
    let asset = |code: &str| -> Result<AssetId, ApiError> {
        registry
            .assets()
            .iter()
            .find(|asset| asset.code.as_str() == code)
            .map(|asset| asset.id)
            .ok_or_else(|| ApiError::bad_request(format!("no asset {code:?}")))
    };
    let account = |text: &str| -> Result<AccountId, ApiError> {
        let address: AccountAddress =
            text.parse().map_err(|error| ApiError::bad_request(format!("{text:?}: {error}")))?;
        engine.resolve(&address).map_err(|_| ApiError::bad_request(format!("no account {text:?}")))
    };
    let side = |side: &RateSideBody| -> Result<ExchangeSide, ApiError> {
        let name = ledger_engine::ledger::account::Name::class(&side.customer_class)
            .map_err(|error| ApiError::bad_request(format!("customer_class: {error}")))?;
        let customer = registry
            .class_by_name(Namespace::Customer, &name)
            .ok_or_else(|| {
                ApiError::bad_request(format!("no customer class {:?}", side.customer_class))
            })?
            .id;
        Ok(ExchangeSide {
            asset: asset(&side.asset)?,
            customer,
            fund: account(&side.fund)?,
            money: account(&side.money_fund)?,
            value: PointValue { minor_units: side.value_minor_units, points: side.value_points },
        })
    };
    let terms = RateTerms {
        from: side(&body.from)?,
        to: side(&body.to)?,
        numerator: body.numerator,
        denominator: body.denominator,
        money: asset(&body.liability_asset)?,
    };
    let effective_at = body
        .effective_at
        .as_deref()
        .map(|text| {
            rules_file::parse_timestamp(text)
                .map_err(|e| ApiError::bad_request(format!("effective_at: {e}")))
        })
        .transpose()?;
    let (version, new) = blocking(engine, move |engine| engine.define_rate(terms, effective_at))
        .await?
        .map_err(refused)?;
    Ok(Json(Defined { version, new }))
}

/// One asset's sums over every account of every shard.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssetBalance {
    /// The asset's code.
    pub asset: String,
    /// Σ debits posted and Σ credits posted: equal in a sound ledger.
    pub debits_posted: String,
    /// See `debits_posted`.
    pub credits_posted: String,
    /// Σ debits pending and Σ credits pending: equal too.
    pub debits_pending: String,
    /// See `debits_pending`.
    pub credits_pending: String,
    /// Whether both pairs are equal: the asset sums to zero.
    pub balanced: bool,
}

/// The global sum-of-balances check.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceCheck {
    /// Whether every asset sums to zero.
    pub balanced: bool,
    /// Each asset.
    pub assets: Vec<AssetBalance>,
}

/// Every asset's debits and credits summed over every account of every shard: each must sum
/// to zero (invariant 2).
#[utoipa::path(get, path = "/v1/ops/balance-check", tag = "operations",
    security(("bearer" = ["auditor"])),
    responses((status = 200, description = "the sums and whether they balance", body = BalanceCheck)))]
pub async fn balance_check(
    State(state): Shared,
    caller: Caller,
) -> Result<Json<BalanceCheck>, ApiError> {
    caller.require(Role::Auditor)?;
    let engine = state.engine()?;
    let totals =
        blocking(engine, |engine| engine.asset_totals()).await?.map_err(ApiError::rejected)?;
    let registry = engine.registry();
    let assets: Vec<AssetBalance> = totals
        .iter()
        .enumerate()
        .map(|(index, sums)| AssetBalance {
            asset: registry
                .assets()
                .get(index)
                .map_or_else(|| index.to_string(), |a| a.code.to_string()),
            debits_posted: sums.debits_posted.to_string(),
            credits_posted: sums.credits_posted.to_string(),
            debits_pending: sums.debits_pending.to_string(),
            credits_pending: sums.credits_pending.to_string(),
            balanced: sums.debits_posted == sums.credits_posted
                && sums.debits_pending == sums.credits_pending,
        })
        .collect();
    Ok(Json(BalanceCheck { balanced: assets.iter().all(|asset| asset.balanced), assets }))
}
