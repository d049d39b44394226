//! Keel examples: see the binaries in `examples/`. This crate's documentation is the
//! user guide's first page (`docs/guide/README.md`), so its code is compiled by CI.
#![doc = include_str!("../../docs/guide/README.md")]
