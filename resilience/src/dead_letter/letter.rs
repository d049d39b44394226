//! A dead letter: what failed, and what became of it since.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::classify::ErrorClass;

/// The most characters of an error message a letter keeps.
pub(crate) const MESSAGE_MAX: usize = 1024;
/// The most characters of a key, a source or a correlation id a letter keeps.
pub(crate) const LABEL_MAX: usize = 512;

/// `text` cut to `max` characters, with `...` after a cut, and NUL characters (which
/// PostgreSQL's text refuses) replaced by U+FFFD.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    let cut = match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}...", &text[..end]),
    };
    if cut.contains('\0') {
        cut.replace('\0', "\u{FFFD}")
    } else {
        cut
    }
}

/// A letter's id in its store: opaque, ordered as the letters were kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LetterId(pub(crate) String);

impl LetterId {
    /// The id as the store wrote it (a counter, a Redis stream id, a row id).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id given back by an operator (from a listing, a log line or an admin URL).
    #[must_use]
    pub fn from_text(text: &str) -> Self {
        LetterId(bounded(text, 64))
    }
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds since the Unix epoch (0 before it).
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))] // for the remote stores
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))] // for the remote stores
pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

/// The class as stored: `transient`, `permanent`, `throttled` or `throttled:<ms>`.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))] // for the remote stores
pub(crate) fn class_text(class: ErrorClass) -> String {
    match class {
        ErrorClass::Transient => "transient".into(),
        ErrorClass::Permanent => "permanent".into(),
        ErrorClass::Throttled { retry_after: None } => "throttled".into(),
        ErrorClass::Throttled {
            retry_after: Some(d),
        } => format!("throttled:{}", d.as_millis()),
    }
}

/// The class from its stored text; `None` when it is not one.
#[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))] // for the remote stores
pub(crate) fn class_from(text: &str) -> Option<ErrorClass> {
    match text {
        "transient" => Some(ErrorClass::Transient),
        "permanent" => Some(ErrorClass::Permanent),
        "throttled" => Some(ErrorClass::Throttled { retry_after: None }),
        other => {
            let ms: u64 = other.strip_prefix("throttled:")?.parse().ok()?;
            Some(ErrorClass::Throttled {
                retry_after: Some(Duration::from_millis(ms)),
            })
        }
    }
}

/// Work that failed for good, to be kept: built with [`NewLetter::new`], refined with
/// the `with_*` methods.
///
/// ```
/// use keel_resilience::dead_letter::NewLetter;
/// use keel_resilience::ErrorClass;
///
/// let letter = NewLetter::new("invoice-7", b"payload".to_vec(), ErrorClass::Transient, "503 after 3 attempts")
///     .with_attempts(3)
///     .with_correlation_id("4bf92f3577b34da6a3ce929d0e0e4736")
///     .with_source("billing");
/// # let _ = letter;
/// ```
#[derive(Clone)]
#[must_use]
pub struct NewLetter {
    pub(crate) key: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) class: ErrorClass,
    pub(crate) message: String,
    pub(crate) attempts: u32,
    pub(crate) first_failed_at: SystemTime,
    pub(crate) last_failed_at: SystemTime,
    pub(crate) correlation_id: Option<String>,
    pub(crate) source: String,
}

impl fmt::Debug for NewLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload is the caller's data (it may hold secrets): its size only.
        f.debug_struct("NewLetter")
            .field("key", &self.key)
            .field("payload_bytes", &self.payload.len())
            .field("class", &self.class)
            .field("message", &self.message)
            .field("attempts", &self.attempts)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl NewLetter {
    /// A letter for the work named `key`, its `payload` (whatever the caller needs to do
    /// it again), and the error that ended it. One attempt, failed now, no correlation
    /// id, source `""`.
    pub fn new(
        key: impl Into<String>,
        payload: Vec<u8>,
        class: ErrorClass,
        message: impl Into<String>,
    ) -> Self {
        let now = SystemTime::now();
        NewLetter {
            key: key.into(),
            payload,
            class,
            message: message.into(),
            attempts: 1,
            first_failed_at: now,
            last_failed_at: now,
            correlation_id: None,
            source: String::new(),
        }
    }

    /// How many attempts were made.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// When the first and the last attempt failed.
    pub fn with_failure_times(mut self, first: SystemTime, last: SystemTime) -> Self {
        self.first_failed_at = first;
        self.last_failed_at = last.max(first);
        self
    }

    /// The correlation id of the request that did the work.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Where the letter came from (a pipeline's name, `cache-write-behind`).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The letter with every text cut to its bound, so a hostile or runaway message
    /// cannot fill the store.
    pub(crate) fn bounded(mut self) -> Self {
        self.key = bounded(&self.key, LABEL_MAX);
        self.message = bounded(&self.message, MESSAGE_MAX);
        self.source = bounded(&self.source, LABEL_MAX);
        self.correlation_id = self.correlation_id.map(|c| bounded(&c, LABEL_MAX));
        self
    }
}

/// A kept letter, as read back from its store.
#[derive(Clone)]
pub struct DeadLetter {
    pub(crate) id: LetterId,
    pub(crate) letter: NewLetter,
    pub(crate) enqueued_at: SystemTime,
    pub(crate) replay_failures: u32,
    pub(crate) last_replay_error: Option<String>,
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("letter", &self.letter)
            .field("replay_failures", &self.replay_failures)
            .finish_non_exhaustive()
    }
}

impl DeadLetter {
    /// Its id in the store.
    #[must_use]
    pub fn id(&self) -> &LetterId {
        &self.id
    }
    /// The key of the work.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.letter.key
    }
    /// The payload the caller kept.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.letter.payload
    }
    /// The class of the error that ended the work.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        self.letter.class
    }
    /// The error's message (at most 1 024 characters).
    #[must_use]
    pub fn message(&self) -> &str {
        &self.letter.message
    }
    /// How many attempts were made before it was dead-lettered.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.letter.attempts
    }
    /// When the first attempt failed.
    #[must_use]
    pub fn first_failed_at(&self) -> SystemTime {
        self.letter.first_failed_at
    }
    /// When the last attempt failed.
    #[must_use]
    pub fn last_failed_at(&self) -> SystemTime {
        self.letter.last_failed_at
    }
    /// The correlation id of the request that did the work.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&str> {
        self.letter.correlation_id.as_deref()
    }
    /// Where it came from.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.letter.source
    }
    /// When the store kept it.
    #[must_use]
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }
    /// How many replays handed it over and failed.
    #[must_use]
    pub fn replay_failures(&self) -> u32 {
        self.replay_failures
    }
    /// The last replay's error, if one failed.
    #[must_use]
    pub fn last_replay_error(&self) -> Option<&str> {
        self.last_replay_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_survive_their_text() {
        for class in [
            ErrorClass::Transient,
            ErrorClass::Permanent,
            ErrorClass::Throttled { retry_after: None },
            ErrorClass::Throttled {
                retry_after: Some(Duration::from_millis(1500)),
            },
        ] {
            assert_eq!(class_from(&class_text(class)), Some(class));
        }
        assert_eq!(class_from("throttled:x"), None);
        assert_eq!(class_from(""), None);
    }

    #[test]
    fn long_texts_are_cut_on_a_character() {
        let message = "é".repeat(5000);
        let letter = NewLetter::new("k", vec![], ErrorClass::Transient, message).bounded();
        assert_eq!(letter.message.chars().count(), MESSAGE_MAX + 3);
        assert!(letter.message.ends_with("..."));
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("bad reply: \0\x01", 100), "bad reply: \u{FFFD}\x01");
    }

    #[test]
    fn debug_shows_the_payload_size_not_the_payload() {
        let letter = NewLetter::new(
            "k",
            b"password=hunter2".to_vec(),
            ErrorClass::Transient,
            "x",
        );
        let shown = format!("{letter:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("payload_bytes: 16"), "{shown}");
    }
}
