//! # keel-graph-client
//!
//! A Microsoft Graph client for services.
//!
//! **Status:** being built (issue 15). Landed so far: the clouds and their hosts
//! ([`Cloud`], [`ApiVersion`]) and Graph's errors read from hostile responses into
//! types a caller branches on ([`GraphError`], [`ApiError`], classified for
//! keel-resilience's retry and breaker); requests to any path with OData query options,
//! checked before they are sent ([`GraphRequest`]); serde models of users, groups,
//! members, teams, channels and Planner, and pages ([`model`]). To come: the client over reqwest with one
//! pipeline of auth, retry, throttling and circuit breaking for all traffic; paging as
//! a bounded-memory `Stream`; typed models for users, groups, teams, channels and
//! Planner; `$batch` with automatic splitting and `dependsOn` chains; a delta tracker;
//! webhook subscriptions and an axum receiver; and an in-process emulator of Graph and
//! the Entra ID token endpoint with fault injection.
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

mod client;
mod cloud;
#[cfg(feature = "emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "emulator")))]
pub mod emulator;
mod error;
pub mod model;
mod request;

pub use client::{BuildError, GraphClient, GraphClientBuilder, GraphResponse};
pub use cloud::{ApiVersion, Cloud, CloudError, CustomCloud};
pub use error::{ApiError, BodyProblem, GraphError};
pub use request::{GraphRequest, RequestError};
