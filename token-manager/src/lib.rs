//! # keel-token-manager
//!
//! Tokens for services, on both sides of the wire.
//!
//! **Status:** this crate is reserved in the workspace and is being built; it exports
//! nothing yet. It will hold:
//!
//! - the server side: a signing key ring (RS256, ES256, EdDSA) with rotation and a JWKS
//!   document, RFC 9068 access tokens, opaque refresh tokens rotated on every use with
//!   reuse detection and token families, stores in memory, Redis and PostgreSQL, and a
//!   validator with an algorithm allowlist and RFC 9470 step-up challenges;
//! - the client side: an OAuth client for Microsoft Entra ID (client credentials,
//!   authorization code with PKCE, refresh, device code, on-behalf-of) with a token cache
//!   that refreshes ahead of expiry, and the `TokenProvider` trait that
//!   `keel-graph-client` consumes.
