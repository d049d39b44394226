//! Keel examples: see the binaries in `examples/`.
