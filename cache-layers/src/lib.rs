//! # keel-cache-layers
//!
//! A two-level cache for services: an in-process L1 (moka, holding `Arc<V>` so an L1 hit
//! neither clones nor decodes) in front of an optional shared L2 on Redis, kept coherent
//! across instances by a backplane.
//!
//! **Status:** this crate is reserved in the workspace and is being built; it exports
//! nothing yet. It will hold `get` / `get_or_load` / `insert` / `invalidate` /
//! `invalidate_tag` / `clear`, single-flight loads (optionally across instances with a
//! distributed lock), TTL with jitter, negative caching, eager refresh, fail-safe, soft
//! and hard loader timeouts, version-checked L2 writes, a Redis pub/sub backplane that
//! catches up on invalidations missed while disconnected, write-through and write-behind,
//! and per-layer metrics. Its L2 sits behind `keel-resilience` policies.
