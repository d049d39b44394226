//! # keel-graph-client
//!
//! A Microsoft Graph client for services.
//!
//! **Status:** this crate is reserved in the workspace and is being built; it exports
//! nothing yet. It will hold a client over reqwest for every national cloud with one
//! pipeline of auth, retry, throttling and circuit breaking for all traffic; paging as a
//! bounded-memory `Stream`; typed models for users, groups, teams, channels and Planner;
//! `$batch` with automatic splitting and `dependsOn` chains; a delta tracker; webhook
//! subscriptions and an axum receiver (rich notifications decrypted); and an in-process
//! emulator of Graph and the Entra ID token endpoint with fault injection.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `correlation` | sends `keel-observability` correlation ids as `client-request-id` |
