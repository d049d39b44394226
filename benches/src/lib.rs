//! Keel benches: see `benches/`.
