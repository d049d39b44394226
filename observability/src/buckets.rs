//! Histogram buckets shared by the exporters.

/// Histogram buckets (seconds) for every metric whose name ends in `_seconds`:
/// OpenTelemetry's advice for `http.server.request.duration`, from 5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
