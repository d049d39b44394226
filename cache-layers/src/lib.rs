//! # keel-cache-layers
//!
//! A two-level cache for services: an in-process L1 ([moka](https://docs.rs/moka),
//! holding `Arc<V>` so an L1 hit neither clones nor decodes) in front of an optional
//! shared L2 on Redis (single node or Redis Cluster), kept coherent across instances by a
//! backplane that also catches up on what an instance missed while cut off.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_cache_layers::{Cache, EntryOptions};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User { name: String }
//!
//! let users = Cache::<User>::builder("users")
//!     .entry_options(
//!         EntryOptions::new(Duration::from_secs(300))
//!             .jitter(Duration::from_secs(30))
//!             .fail_safe(Duration::from_secs(3600)),
//!     )
//!     // .l2(RedisL2::single("redis://127.0.0.1:6379")?)  for the shared level
//!     .build()?;
//! let user = users
//!     .get_or_load("42", || async { Ok::<_, std::io::Error>(User { name: "Ada".into() }) })
//!     .await?;
//! assert_eq!(user.name, "Ada");
//! # Ok(()) }
//! ```
//!
//! ## What it does
//!
//! - **Reads**: [`Cache::get`], [`Cache::peek`] (L1 only, synchronous),
//!   [`Cache::get_or_load`] and [`Cache::get_or_load_optional`] (negative caching).
//! - **Single-flight**: concurrent misses of a key share one load, run in its own task;
//!   with [`CacheBuilder::distributed_lock`], one instance loads for all.
//! - **Expiry**: per-entry TTL with jitter, eager refresh (stale-while-revalidate),
//!   fail-safe (the last good value when the loader or L2 fails, for a bounded time and
//!   with throttled retries), soft and hard loader timeouts. See [`EntryOptions`].
//! - **Writes**: [`Cache::insert`] (write-through), [`Cache::insert_behind`]
//!   (write-behind: bounded queue, order kept, flushed by [`Cache::shutdown`]),
//!   [`Cache::warm`].
//! - **Invalidation**: [`Cache::invalidate`], [`Cache::invalidate_tag`], [`Cache::clear`],
//!   here, in L2 and on every other instance.
//! - **Coherence** (feature `redis`): invalidations go out on Redis pub/sub and into a
//!   numbered log; an instance that was cut off replays what it missed when it comes back
//!   (or drops its L1 when it cannot know). Versions are minted inside Redis, so the
//!   change that reaches Redis last wins whatever the instances' clocks; a load writes
//!   its result to L2 only if nothing changed its key or tags since it began; a change
//!   whose L2 step failed is kept and applied when Redis answers. After `insert`,
//!   `invalidate`, `invalidate_tag` or `clear` returns `Ok`, no instance serves an older
//!   value once the backplane delivered it (or the instance caught up): the guarantee,
//!   what happens when Redis is down or goes back in time, and the limits are in the
//!   README's "The coherence guarantee".
//! - **Faults**: L2 calls go through a `keel-resilience` circuit breaker and timeouts;
//!   with Redis down the cache serves from L1 and goes back to L2 by itself.
//! - **Keys and values**: keys carry the namespace, a schema version and a generation;
//!   the [`Codec`] is pluggable ([`Postcard`] by default) with LZ4 [`Compression`] above a
//!   threshold; a record that does not decode is a miss.
//! - **Metrics**: see [`CacheStats`] and the `stats` module docs for the `metrics` names.
//!
//! ## Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `redis` | yes | [`RedisL2`], the backplane, the distributed lock and write-behind to L2 |
//! | `problem` | no | keel-observability's `IntoProblem` for [`CacheError`]: handlers return cache errors as RFC 9457 problems |
//!
//! MSRV: the workspace's `rust-version` (1.95).

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "redis")]
mod backplane;
mod builder;
mod cache;
mod clock;
mod codec;
mod entry;
mod error;
mod flight;
mod keys;
#[cfg(feature = "redis")]
mod l2;
mod options;
#[cfg(feature = "redis")]
mod pending;
#[cfg(feature = "redis")]
mod remote;
pub mod stats;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use backplane::BackplaneStatus;
pub use builder::CacheBuilder;
pub use cache::{Cache, Warmed};
pub use codec::{Codec, Compression, Postcard};
pub use error::{BoxError, BuildError, CacheError, CodecError, L2Failure};
pub use keel_resilience::clock::{CoarseClock, ManualClock, SystemClock, WallClock};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use l2::{L2SetupError, RedisL2};
pub use options::EntryOptions;
pub use stats::CacheStats;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
