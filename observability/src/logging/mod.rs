//! Logging for executables: [`init`] installs a subscriber with an `EnvFilter`, a
//! non-blocking writer and JSON or pretty output.

mod escape;
mod json;
mod timestamp;

use std::fmt;
use std::io::Write;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use json::JsonLayer;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One JSON object per line, fields flattened at the top level (see [`JsonLayer`]).
    #[default]
    Json,
    /// tracing-subscriber's multi-line human format, for a terminal.
    Pretty,
}

impl std::str::FromStr for LogFormat {
    type Err = InitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            other => Err(InitError::InvalidFormat(other.to_owned())),
        }
    }
}

/// Why [`init`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The filter is not valid `EnvFilter` syntax.
    #[error("invalid log filter {filter:?}: {reason}; use directives like `info,my_crate=debug`")]
    InvalidFilter {
        /// The filter as given.
        filter: String,
        /// What the parser said.
        reason: String,
    },
    /// The format name is not `json` or `pretty`.
    #[error("unknown log format {0:?}: use `json` or `pretty`")]
    InvalidFormat(String),
    /// A global subscriber is already installed.
    #[error("a global tracing subscriber is already installed; call init() once, at startup")]
    AlreadyInitialized,
    /// The OTLP exporter could not be built.
    #[cfg(feature = "otlp")]
    #[error(transparent)]
    Otlp(#[from] crate::otlp::OtlpError),
}

/// Settings for [`init`].
///
/// ```
/// use keel_observability::{LogConfig, LogFormat};
///
/// let config = LogConfig::builder()
///     .format(LogFormat::Json)
///     .filter("info,my_service=debug")
///     .writer(std::io::stderr())
///     .build()?;
/// # Ok::<(), keel_observability::InitError>(())
/// ```
#[non_exhaustive]
pub struct LogConfig {
    format: LogFormat,
    filter: EnvFilter,
    writer: Box<dyn Write + Send + 'static>,
    lossy: bool,
    buffered_lines: usize,
    #[cfg(feature = "otlp")]
    otlp: Option<crate::otlp::OtlpConfig>,
}

impl fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogConfig")
            .field("format", &self.format)
            .field("filter", &self.filter.to_string())
            .field("lossy", &self.lossy)
            .field("buffered_lines", &self.buffered_lines)
            .finish_non_exhaustive()
    }
}

impl LogConfig {
    /// A builder with the defaults: JSON to stdout, filter `info`, lossy writer with a
    /// 128 000-line buffer (a service never blocks on logging; lines are dropped and
    /// counted when the buffer is full).
    pub fn builder() -> LogConfigBuilder {
        LogConfigBuilder::default()
    }

    /// The configuration from the environment: `RUST_LOG` for the filter (default
    /// `info`) and `KEEL_LOG_FORMAT` (`json` or `pretty`, default `json`).
    ///
    /// # Errors
    /// [`InitError::InvalidFilter`] or [`InitError::InvalidFormat`] for bad values.
    pub fn from_env() -> Result<Self, InitError> {
        let mut builder = LogConfig::builder();
        if let Ok(filter) = std::env::var("RUST_LOG") {
            builder = builder.filter(filter);
        }
        if let Ok(format) = std::env::var("KEEL_LOG_FORMAT") {
            builder = builder.format(format.parse()?);
        }
        builder.build()
    }
}

/// Builds a [`LogConfig`].
#[must_use]
pub struct LogConfigBuilder {
    format: LogFormat,
    filter: String,
    writer: Box<dyn Write + Send + 'static>,
    lossy: bool,
    buffered_lines: usize,
    #[cfg(feature = "otlp")]
    otlp: Option<crate::otlp::OtlpConfig>,
}

impl fmt::Debug for LogConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogConfigBuilder")
            .field("format", &self.format)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Default for LogConfigBuilder {
    fn default() -> Self {
        LogConfigBuilder {
            format: LogFormat::Json,
            filter: "info".to_owned(),
            writer: Box::new(std::io::stdout()),
            lossy: true,
            buffered_lines: 128_000,
            #[cfg(feature = "otlp")]
            otlp: None,
        }
    }
}

impl LogConfigBuilder {
    /// JSON or pretty output.
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// An `EnvFilter` directive string such as `info,tower_http=debug`.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = filter.into();
        self
    }

    /// Where lines go (stdout by default). Writes happen on a background thread.
    pub fn writer(mut self, writer: impl Write + Send + 'static) -> Self {
        self.writer = Box::new(writer);
        self
    }

    /// `false` makes logging wait for buffer space instead of dropping lines.
    pub fn lossy(mut self, lossy: bool) -> Self {
        self.lossy = lossy;
        self
    }

    /// How many lines the non-blocking buffer holds.
    pub fn buffered_lines(mut self, lines: usize) -> Self {
        self.buffered_lines = lines.max(1);
        self
    }

    /// Also export spans over OTLP/HTTP.
    #[cfg(feature = "otlp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
    pub fn otlp(mut self, config: crate::otlp::OtlpConfig) -> Self {
        self.otlp = Some(config);
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`InitError::InvalidFilter`] when the filter does not parse.
    pub fn build(self) -> Result<LogConfig, InitError> {
        let filter =
            EnvFilter::builder()
                .parse(&self.filter)
                .map_err(|e| InitError::InvalidFilter {
                    filter: self.filter.clone(),
                    reason: e.to_string(),
                })?;
        Ok(LogConfig {
            format: self.format,
            filter,
            writer: self.writer,
            lossy: self.lossy,
            buffered_lines: self.buffered_lines,
            #[cfg(feature = "otlp")]
            otlp: self.otlp,
        })
    }
}

/// Keeps the background log writer alive; dropping it flushes every buffered line.
/// Hold it in `main` for the life of the program.
#[must_use = "dropping the guard stops the log writer: keep it alive in main"]
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
    #[cfg(feature = "otlp")]
    _otlp: Option<crate::otlp::OtlpGuard>,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// Installs the global `tracing` subscriber for an executable. Libraries never call this.
///
/// ```no_run
/// use keel_observability::{init, LogConfig};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let _guard = init(LogConfig::from_env()?)?;
///     tracing::info!(port = 8080, "listening");
///     Ok(())
/// } // the guard flushes the last lines here
/// ```
///
/// # Errors
/// [`InitError::AlreadyInitialized`] when a global subscriber is already set.
pub fn init(config: LogConfig) -> Result<LogGuard, InitError> {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(config.lossy)
        .buffered_lines_limit(config.buffered_lines)
        .thread_name("keel-log-writer")
        .finish(config.writer);
    let output = match config.format {
        LogFormat::Json => JsonLayer::new(writer).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_writer(writer)
            .boxed(),
    };
    #[cfg(feature = "otlp")]
    let (otel_layer, otlp_guard) = match config.otlp {
        Some(otlp) => {
            let (layer, guard) = crate::otlp::tracing_layer(&otlp)?;
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry()
        .with(config.filter)
        .with(output);
    #[cfg(feature = "otlp")]
    let registry = registry.with(otel_layer);
    registry
        .try_init()
        .map_err(|_| InitError::AlreadyInitialized)?;
    Ok(LogGuard {
        _writer: guard,
        #[cfg(feature = "otlp")]
        _otlp: otlp_guard,
    })
}
