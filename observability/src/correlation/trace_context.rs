//! W3C Trace Context (`traceparent`) parsing and formatting.

use std::fmt;

/// The W3C trace context of the current request: the trace it belongs to, the id of this
/// service's span for it, and the caller's span when one came in.
///
/// Parsed from an incoming `traceparent` header
/// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), or started afresh.
///
/// ```
/// use keel_observability::TraceContext;
///
/// let incoming = TraceContext::from_traceparent(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
/// )
/// .expect("valid header");
/// assert_eq!(incoming.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(incoming.parent_span_id(), Some(0x00f0_67aa_0ba9_02b7));
/// assert!(incoming.sampled());
/// // Our own span gets a fresh id; the outgoing header names it as the parent.
/// assert!(incoming.to_traceparent().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
///
/// // Malformed or all-zero headers are refused.
/// assert!(TraceContext::from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    flags: u8,
}

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// Parses a `traceparent` header value and starts a child span of it. Returns `None`
    /// for anything the W3C spec says to ignore: wrong length, uppercase or non-hex
    /// digits, version `ff`, all-zero trace or parent id.
    #[must_use]
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        // Version 00 is exactly 55 characters; later versions may append fields after a
        // dash, which a version-00 parser must ignore.
        if bytes.len() < 55 || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex_u8(&bytes[0..2])?;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        let trace_id = hex_u128(&bytes[3..35])?;
        let parent = hex_u64(&bytes[36..52])?;
        let flags = hex_u8(&bytes[53..55])?;
        if trace_id == 0 || parent == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id: new_span_id(),
            parent_span_id: Some(parent),
            flags: flags & SAMPLED,
        })
    }

    /// Starts a new trace (no caller span), sampled.
    #[must_use]
    pub fn new_root() -> Self {
        Self::with_trace_id(new_trace_id())
    }

    /// Starts a root span in the given trace (0 is replaced by a random id).
    #[must_use]
    pub fn with_trace_id(trace_id: u128) -> Self {
        TraceContext {
            trace_id: if trace_id == 0 {
                new_trace_id()
            } else {
                trace_id
            },
            span_id: new_span_id(),
            parent_span_id: None,
            flags: SAMPLED,
        }
    }

    /// The 128-bit trace id.
    #[must_use]
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The trace id as 32 lowercase hex digits, as logs and headers carry it.
    #[must_use]
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This service's span id for the request.
    #[must_use]
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The span id as 16 lowercase hex digits.
    #[must_use]
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The caller's span id, when the request carried a `traceparent`.
    #[must_use]
    pub fn parent_span_id(&self) -> Option<u64> {
        self.parent_span_id
    }

    /// Whether the caller asked for this trace to be recorded.
    #[must_use]
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `traceparent` to send on outgoing calls: same trace, our span as the parent.
    #[must_use]
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("trace_id", &format_args!("{:032x}", self.trace_id))
            .field("span_id", &format_args!("{:016x}", self.span_id))
            .field(
                "parent_span_id",
                &self.parent_span_id.map(|p| format!("{p:016x}")),
            )
            .field("sampled", &self.sampled())
            .finish()
    }
}

fn new_trace_id() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

pub(crate) fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// Lowercase hex only: the spec makes uppercase invalid.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &b| {
        Some((acc << 4) | u128::from(hex_digit(b)?))
    })
}

fn hex_u64(digits: &[u8]) -> Option<u64> {
    digits
        .iter()
        .try_fold(0u64, |acc, &b| Some((acc << 4) | u64::from(hex_digit(b)?)))
}

fn hex_u8(digits: &[u8]) -> Option<u8> {
    digits
        .iter()
        .try_fold(0u8, |acc, &b| Some((acc << 4) | hex_digit(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let ctx = TraceContext::from_traceparent(VALID).unwrap();
        assert_eq!(ctx.trace_id(), 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(ctx.parent_span_id(), Some(0x00f0_67aa_0ba9_02b7));
        assert_ne!(ctx.span_id(), 0);
        assert_ne!(Some(ctx.span_id()), ctx.parent_span_id());
        assert!(ctx.sampled());
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                TraceContext::from_traceparent(bad).is_none(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn accepts_future_versions_with_extra_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(TraceContext::from_traceparent(v).is_some());
    }

    #[test]
    fn unsampled_flag_is_kept() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let ctx = TraceContext::from_traceparent(v).unwrap();
        assert!(!ctx.sampled());
        assert!(ctx.to_traceparent().ends_with("-00"));
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in ".{0,200}") {
            let _ = TraceContext::from_traceparent(&s);
        }

        #[test]
        fn formatted_headers_round_trip(trace in 1u128.., parent in 1u64.., sampled: bool) {
            let header = format!("00-{trace:032x}-{parent:016x}-{:02x}", u8::from(sampled));
            let ctx = TraceContext::from_traceparent(&header).unwrap();
            prop_assert_eq!(ctx.trace_id(), trace);
            prop_assert_eq!(ctx.parent_span_id(), Some(parent));
            prop_assert_eq!(ctx.sampled(), sampled);
            let out = TraceContext::from_traceparent(&ctx.to_traceparent()).unwrap();
            prop_assert_eq!(out.trace_id(), trace);
            prop_assert_eq!(out.parent_span_id(), Some(ctx.span_id()));
        }
    }
}
