//! # keel-token-manager
//!
//! Tokens for services, on both sides of the wire.
//!
//! ```
//! use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey, Validator};
//!
//! let keys = KeyRing::new(SigningKey::generate("2026-11", Algorithm::EdDSA).unwrap());
//! let issuer = AccessTokenIssuer::new(keys.clone(), "https://auth.example", "https://api.example");
//! let token = issuer.issue(&Grant::new("user-42", "web-app").scope("orders:read")).unwrap();
//!
//! let validator = Validator::new(keys.clone(), "https://auth.example", "https://api.example");
//! assert!(validator.validate(&token.token).unwrap().has_scope("orders:read"));
//! let jwks_json = keys.jwks().to_json(); // publish at /.well-known/jwks.json
//! # assert!(jwks_json.contains("\"kty\":\"OKP\""));
//! ```
//!
//! Refresh tokens:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use keel_token_manager::{MemoryStore, RefreshConfig, RefreshTokens, SealingKeys};
//!
//! let refresh = RefreshTokens::new(MemoryStore::new(), SealingKeys::generate(1).unwrap(), RefreshConfig::default()).unwrap();
//! let login = refresh.issue("user-42", "web-app").await.unwrap(); // a new session (family)
//! let next = refresh.rotate(&login.token).await.unwrap();         // rotated on every use
//! assert_eq!(next.family, login.family);
//! # }
//! ```
//!
//! **Status:** ready: a key ring (RS256, ES256, EdDSA) with rotation and a JWKS
//! document; RFC 9068 access tokens; a validator with an algorithm allowlist, `typ` and
//! `kid` checks and RFC 9470 step-up challenges; refresh tokens (256-bit, stored as
//! SHA-256 hashes) rotated on every use, with families, absolute and idle lifetimes,
//! reuse detection that revokes the family, a grace period in which a retry returns the
//! same successor (sealed with AES-256-GCM under a rotating key ring), revocation,
//! session listing and cleanup, on the in-memory store, on Redis (feature `redis`: one
//! Lua script, one round trip per rotation; Redis Cluster too) and on PostgreSQL (feature `postgres`: one
//! transaction per rotation, migrations shipped); and the client side ([`client`]): the
//! `TokenProvider` trait that `keel-graph-client` consumes, an MSAL-style token cache, and
//! Entra ID's credentials and flows.
//!
//! | feature | what |
//! |---|---|
//! | `http` (default) | the credentials and flows that call a token endpoint (reqwest with rustls), [`client::RemoteJwks`] |
//! | `redis` | [`RedisStore`]: refresh-token families in Redis, rotation in one Lua script; [`client::SharedTokenCache`] |
//! | `postgres` | [`PostgresStore`]: families in PostgreSQL, rotation in one transaction, migrations shipped |
//! | `axum` | [`Bearer`], an axum extractor for bearer tokens, and keel-observability's `IntoProblem` for the validator's, step-up's and refresh errors |
//!
//! Crypto: signatures through `jsonwebtoken` on its `aws_lc_rs` backend (RS256
//! verification is several times faster there than on `rust_crypto`); randomness,
//! hashing and key parsing through `ring`.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod access;
mod audit;
#[cfg(feature = "axum")]
mod bearer;
pub mod client;
mod keys;
#[cfg(feature = "postgres")]
mod postgres_store;
#[cfg(feature = "redis")]
mod redis_store;
mod refresh;
mod seal;
pub mod store;
mod untrusted;
mod validate;

pub use access::{
    ACCESS_TOKEN_TYP, AccessTokenClaims, AccessTokenIssuer, Audience, Grant, IssueError,
    IssuedAccessToken,
};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use bearer::{Bearer, BearerRejection};
pub use keys::{Algorithm, Jwk, Jwks, KeyError, KeyRing, SigningKey};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres_store::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_store::RedisStore;

/// The Redis connection [`RedisStore`] and [`client::SharedTokenCache`] take (single
/// node or cluster), the one every Keel crate takes: keel-resilience's.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use keel_resilience::RedisConnection;

/// The redis-rs version [`RedisStore`] and [`client::SharedTokenCache`] take
/// connections of: name it through this re-export, so its version always matches.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;

/// The deadpool-postgres version [`PostgresStore`] takes a pool of.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use deadpool_postgres;
pub use refresh::{
    IssuedRefreshToken, RefreshConfig, RefreshConfigError, RefreshError, RefreshTokens, Session,
    hash_token,
};
pub use seal::{SealError, SealingKeys};
pub use store::{MemoryStore, RefreshTokenStore};
pub use validate::{StepUp, StepUpChallenge, ValidationError, Validator};

/// The README's examples, compiled as doctests (one needs the `axum` feature; CI runs
/// them with every feature).
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
