//! Integration tests of keel-cache-layers: L1 behaviour on a manual clock, and the
//! two-level cache against real redis-server processes (single node and cluster).

#[cfg(feature = "redis")]
mod checker;
#[cfg(feature = "redis")]
mod coherence;
mod errors;
mod local;
#[cfg(feature = "redis")]
mod review;
#[cfg(feature = "redis")]
mod review2;
#[cfg(feature = "redis")]
mod shared;
#[cfg(feature = "redis")]
mod support;
