//! Audit events: one `tracing` event (target `keel_token_manager::audit`) and one metric
//! per security-relevant action. Tokens and their hashes never appear; ids (`jti`,
//! `kid`, client) do.
//!
//! | metric | labels |
//! |---|---|
//! | `keel_tokens_issued_total` | `alg` |
//! | `keel_tokens_validation_failures_total` | `reason` |

use crate::keys::Algorithm;

pub(crate) fn issued(kid: &str, algorithm: Algorithm, client_id: &str, jti: &str) {
    tracing::info!(
        target: "keel_token_manager::audit",
        event = "access_token_issued",
        kid,
        alg = algorithm.as_str(),
        client_id,
        jti,
    );
    metrics::counter!("keel_tokens_issued_total", "alg" => algorithm.as_str()).increment(1);
}

pub(crate) fn validation_failed(reason: &'static str, kid: Option<&str>) {
    tracing::warn!(
        target: "keel_token_manager::audit",
        event = "access_token_rejected",
        reason,
        kid,
    );
    metrics::counter!("keel_tokens_validation_failures_total", "reason" => reason).increment(1);
}

pub(crate) fn refresh_issued(family: &crate::store::FamilyId, client_id: &str) {
    tracing::info!(target: "keel_token_manager::audit", event = "refresh_token_issued", family = %family, client_id);
    metrics::counter!("keel_refresh_tokens_total", "event" => "issued").increment(1);
}

pub(crate) fn refresh_rotated(family: &crate::store::FamilyId, retried: bool) {
    tracing::info!(target: "keel_token_manager::audit", event = "refresh_token_rotated", family = %family, retried);
    metrics::counter!("keel_refresh_tokens_total", "event" => if retried { "retried" } else { "rotated" }).increment(1);
}

pub(crate) fn reuse_detected(family: &crate::store::FamilyId, subject: &str, client_id: &str) {
    tracing::error!(
        target: "keel_token_manager::audit",
        event = "refresh_token_reuse_detected",
        security = true,
        family = %family,
        subject,
        client_id,
        "a rotated refresh token was presented again; its session is revoked"
    );
    metrics::counter!("keel_refresh_tokens_total", "event" => "reuse_detected").increment(1);
}

pub(crate) fn revoked(scope: &'static str, family: Option<&crate::store::FamilyId>) {
    tracing::info!(target: "keel_token_manager::audit", event = "refresh_token_revoked", scope, family = family.map(tracing::field::display));
    metrics::counter!("keel_refresh_tokens_total", "event" => "revoked").increment(1);
}
