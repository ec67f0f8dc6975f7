//! The two-person rule and the reveal policy, through their definer functions
//! (`vault.reveal_ask()`, `reveal_approve()`, `reveal_pending()`, `policy_set()`; migration 0014).
//! Executing an approved request is [`super::vault::execute`].

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use super::vault::RevealRequest;

/// Records a request under the two-person rule; returns its id. Nothing is revealed.
pub async fn ask(pool: &PgPool, request: &RevealRequest<'_>) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT vault.reveal_ask($1, $2, $3, $4, $5, $6)")
        .bind(request.selector.name())
        .bind(request.selector.value())
        .bind(request.purpose.as_str())
        .bind(request.reason)
        .bind(request.ticket)
        .bind(request.actor)
        .fetch_one(pool)
        .await
        .map_err(StoreError::during(
            "recording the reveal request (vault.reveal_ask())",
        ))
}

/// Approves another login's request: the audit row, and the refusal if the database refused.
pub async fn approve(
    pool: &PgPool,
    request_id: i64,
    reason: &str,
    actor: &str,
) -> Result<(i64, Option<String>), StoreError> {
    sqlx::query_as("SELECT audit_id, refused FROM vault.reveal_approve($1, $2, $3)")
        .bind(request_id)
        .bind(reason)
        .bind(actor)
        .fetch_one(pool)
        .await
        .map_err(StoreError::during(
            "approving the reveal request (vault.reveal_approve())",
        ))
}

/// A request not executed and not expired.
#[derive(Debug, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub requested_by: String,
    pub selector: String,
    pub value: String,
    pub purpose: String,
    pub reason: String,
    pub ticket: Option<String>,
    pub records: i32,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub approved_by: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
}

/// Every pending request, oldest first.
pub async fn pending(pool: &PgPool) -> Result<Vec<Pending>, StoreError> {
    sqlx::query_as(
        "SELECT id, requested_by, selector, value, purpose, reason, ticket, records,
                requested_at, expires_at, approved_by, approved_at
         FROM vault.reveal_pending()",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::during(
        "listing reveal requests (vault.reveal_pending())",
    ))
}

/// The deployment's reveal policy (`vault.reveal_policy`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Policy {
    pub purposes: Vec<String>,
    pub users_per_window: i32,
    pub window_hours: i32,
    pub records_per_reveal: i32,
    pub two_person: Vec<String>,
    pub request_ttl_hours: i32,
}

/// Reads the policy.
pub async fn policy(pool: &PgPool) -> Result<Policy, StoreError> {
    sqlx::query_as(
        "SELECT purposes, users_per_window, window_hours, records_per_reveal, two_person,
                request_ttl_hours
         FROM vault.reveal_policy WHERE only_row",
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::during("reading vault.reveal_policy"))
}

/// A change to the policy: `None` keeps a setting.
#[derive(Debug, Default)]
pub struct PolicyChange {
    pub purposes: Option<Vec<String>>,
    pub users_per_window: Option<i32>,
    pub window_hours: Option<i32>,
    pub records_per_reveal: Option<i32>,
    pub two_person: Option<Vec<String>>,
    pub request_ttl_hours: Option<i32>,
}

/// Changes the policy through `vault.policy_set()`, which audits it; returns the audit row id.
pub async fn set_policy(
    pool: &PgPool,
    change: &PolicyChange,
    reason: &str,
    actor: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT vault.policy_set($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&change.purposes)
        .bind(change.users_per_window)
        .bind(change.window_hours)
        .bind(change.records_per_reveal)
        .bind(&change.two_person)
        .bind(change.request_ttl_hours)
        .bind(reason)
        .bind(actor)
        .fetch_one(pool)
        .await
        .map_err(StoreError::during(
            "changing the reveal policy (vault.policy_set())",
        ))
}
