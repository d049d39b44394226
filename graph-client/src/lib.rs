//! # keel-graph-client
//!
//! A Microsoft Graph client for services.
//!
//! **Status:** ready: the client, batching and the emulator (issue 15); delta, the
//! change feed, webhooks and subscriptions (issue 16).
//!
//! - [`GraphClient`]: a token provider per tenant, `client-request-id` and `SdkVersion`
//!   on every call, every call (next links and `$batch` requests too) through one
//!   pipeline of tower layers ([`middleware`]: trace and RED metrics, retries of
//!   throttled answers with `Retry-After` and of transient failures of idempotent
//!   calls, [`Concurrency`] per tenant and Outlook's budget per mailbox, a circuit
//!   breaker per host, the claims challenge, a time limit per attempt, your own
//!   layers); [`pages`](GraphClient::pages) and [`items`](GraphClient::items) streams
//!   with one page in memory and next links kept on the cloud's Graph origin.
//! - [`Batch`] and [`GraphClient::batch`]: `$batch` split at 20 with `dependsOn` chains,
//!   answers by id, throttled steps re-sent with their ids; [`AutoBatch`] gathers
//!   concurrent calls into `$batch` requests transparently.
//! - Helpers for users, groups, members, channels and Planner ([`GraphClient::tasks`],
//!   [`GraphClient::update_task`] with `If-Match`, …).
//! - [`Cloud`] and [`ApiVersion`]: the national clouds, or your own base URLs.
//! - [`GraphError`] and [`ApiError`]: Graph's errors read from hostile responses into
//!   types a caller branches on, classified for keel-resilience's retry and breaker.
//! - [`GraphRequest`]: any path with OData query options, checked before it is sent.
//! - [`model`]: serde models of users, groups, members, teams, channels, Planner, pages.
//! - `emulator` (feature `emulator`): Graph and the Entra ID token endpoint in process,
//!   over HTTP or HTTPS, with fault injection.
//!
//! ```
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use keel_graph_client::{Cloud, GraphError};
//! use keel_resilience::{Classify, ErrorClass};
//! use std::time::Duration;
//!
//! let cloud: Cloud = "usgovl4".parse().unwrap();
//! assert_eq!(cloud.graph_base(), "https://graph.microsoft.us");
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", HeaderValue::from_static("2.128"));
//! let throttled = GraphError::from_response(
//!     StatusCode::TOO_MANY_REQUESTS,
//!     &headers,
//!     br#"{"error":{"code":"TooManyRequests","message":"Please retry after"}}"#,
//! );
//! assert_eq!(
//!     throttled.class(),
//!     ErrorClass::Throttled { retry_after: Some(Duration::from_millis(2128)) }
//! );
//! ```
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `correlation` | sends `keel-observability` correlation ids as `client-request-id` |
//! | `emulator` | [`emulator::Emulator`]: Graph and the Entra ID token endpoint in process, on loopback, with fault injection |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(test)]
mod arbitrary_json;
mod autobatch;
mod batch;
mod budget;
mod client;
mod cloud;
pub mod delta;
#[cfg(feature = "emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "emulator")))]
pub mod emulator;
mod error;
pub mod middleware;
pub mod model;
mod request;
mod resources;
#[cfg(feature = "webhooks")]
pub mod webhook;

pub use autobatch::AutoBatch;
pub use batch::{Batch, BatchError, BatchResponses, MAX_BATCH, StepId};
pub use budget::Concurrency;
pub use client::{BuildError, GraphClient, GraphClientBuilder, GraphResponse};
pub use cloud::{ApiVersion, Cloud, CloudError, CustomCloud};
pub use error::{ApiError, BatchProblem, BodyProblem, GraphError};
pub use request::{GraphRequest, RequestError};

/// The README's examples, compiled as doctests (they use the emulator and webhooks).
#[cfg(all(doctest, feature = "emulator", feature = "webhooks"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
