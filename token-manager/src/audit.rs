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
