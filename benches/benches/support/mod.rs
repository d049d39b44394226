//! Shared settings for Keel's criterion benches.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use criterion::Criterion;

/// Short, repeatable runs: these machines are noisy, so report medians and ratios.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(60)
        .noise_threshold(0.03)
        .configure_from_args()
}
