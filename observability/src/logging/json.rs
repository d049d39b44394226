//! The JSON lines layer.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::escape::{Escaper, escape_into};
use super::timestamp::write_rfc3339;
use crate::correlation::RequestContext;

/// A `tracing` layer that writes one JSON object per event, with everything at the top
/// level: `timestamp`, `level`, `target`, `message`, the event's fields, then
/// `correlation_id`, `trace_id` and `span_id` from the current [`RequestContext`], then
/// the fields of every span the event is in (innermost first). A name is written once:
/// the event's own fields win over the context, which wins over span fields. Event fields
/// named `timestamp`, `level` or `target` are written as `field.timestamp` and so on.
///
/// [`init`](crate::init) installs it; use it directly to compose your own subscriber.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// use keel_observability::JsonLayer;
///
/// let subscriber = tracing_subscriber::registry().with(JsonLayer::new(std::io::stdout));
/// tracing::subscriber::with_default(subscriber, || {
///     let span = tracing::info_span!("checkout", order_id = 42);
///     let _entered = span.enter();
///     tracing::info!(items = 3, "order placed");
///     // {"timestamp":"…","level":"INFO","target":"…","message":"order placed","items":3,"order_id":42}
/// });
/// ```
#[derive(Debug)]
pub struct JsonLayer<W> {
    make_writer: W,
}

impl<W> JsonLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    /// A layer that writes lines to `make_writer` (e.g. `std::io::stdout`, or
    /// tracing-appender's non-blocking writer).
    #[must_use]
    pub fn new(make_writer: W) -> Self {
        JsonLayer { make_writer }
    }
}

/// The rendered fields of one span, kept in its extensions.
#[derive(Debug, Default)]
struct SpanFields {
    fields: Vec<(&'static str, String)>,
}

impl SpanFields {
    fn set(&mut self, name: &'static str, value: String) {
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name, value)),
        }
    }
}

/// Renders each span field to a JSON value.
struct SpanFieldVisitor<'a>(&'a mut SpanFields);

impl Visit for SpanFieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut out = String::new();
        write_debug(&mut out, value);
        self.0.set(field.name(), out);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let mut out = String::with_capacity(value.len() + 2);
        write_str(&mut out, value);
        self.0.set(field.name(), out);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.set(field.name(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.set(field.name(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.set(field.name(), value.to_string());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let mut out = String::new();
        write_f64(&mut out, value);
        self.0.set(field.name(), out);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut out = String::new();
        write_error(&mut out, value);
        self.0.set(field.name(), out);
    }
}

/// Keys already written on the line. Field names are `&'static str`, so comparing them
/// is cheap; past the inline capacity duplicates are merely possible, never unsafe.
struct Written {
    names: [&'static str; 24],
    len: usize,
}

impl Written {
    fn new() -> Self {
        Written {
            names: [""; 24],
            len: 0,
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.names[..self.len].contains(&name)
    }
    fn push(&mut self, name: &'static str) {
        if self.len < self.names.len() {
            self.names[self.len] = name;
            self.len += 1;
        }
    }
}

/// Writes the event's fields straight into the line.
struct EventVisitor<'a> {
    out: &'a mut String,
    written: &'a mut Written,
}

impl EventVisitor<'_> {
    fn key(&mut self, name: &'static str) {
        self.out.push_str(",\"");
        if matches!(name, "timestamp" | "level" | "target") {
            self.out.push_str("field.");
        } else {
            self.written.push(name);
        }
        escape_into(self.out, name);
        self.out.push_str("\":");
    }
}

impl Visit for EventVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field.name());
        write_debug(self.out, value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field.name());
        write_str(self.out, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field.name());
        let _ = write!(self.out, "{value}");
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field.name());
        let _ = write!(self.out, "{value}");
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
        self.out.push_str(if value { "true" } else { "false" });
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field.name());
        write_f64(self.out, value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field.name());
        write_error(self.out, value);
    }
}

fn write_str(out: &mut String, value: &str) {
    out.push('"');
    escape_into(out, value);
    out.push('"');
}

fn write_debug(out: &mut String, value: &dyn std::fmt::Debug) {
    out.push('"');
    let _ = write!(Escaper(out), "{value:?}");
    out.push('"');
}

fn write_f64(out: &mut String, value: f64) {
    if value.is_finite() {
        let _ = write!(out, "{value}");
    } else {
        // JSON has no NaN or infinity.
        let _ = write!(out, "\"{value}\"");
    }
}

fn write_error(out: &mut String, error: &(dyn std::error::Error + 'static)) {
    out.push('"');
    let _ = write!(Escaper(out), "{error}");
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(Escaper(out), ": {cause}");
        source = cause.source();
    }
    out.push('"');
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<W> JsonLayer<W> {
    fn format<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>, out: &mut String)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        out.push_str("{\"timestamp\":\"");
        write_rfc3339(out, SystemTime::now());
        out.push_str("\",\"level\":\"");
        out.push_str(meta.level().as_str());
        out.push_str("\",\"target\":\"");
        escape_into(out, meta.target());
        out.push('"');

        let mut written = Written::new();
        event.record(&mut EventVisitor {
            out,
            written: &mut written,
        });

        RequestContext::with_current(|context| {
            let Some(context) = context else { return };
            if !written.contains("correlation_id") {
                out.push_str(",\"correlation_id\":");
                write_str(out, context.correlation_id().as_str());
                written.push("correlation_id");
            }
            if !written.contains("trace_id") {
                let _ = write!(out, ",\"trace_id\":\"{:032x}\"", context.trace().trace_id());
                written.push("trace_id");
            }
            if !written.contains("span_id") {
                let _ = write!(out, ",\"span_id\":\"{:016x}\"", context.trace().span_id());
                written.push("span_id");
            }
        });

        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<SpanFields>() else {
                    continue;
                };
                for (name, value) in &fields.fields {
                    if !written.contains(name) {
                        out.push_str(",\"");
                        escape_into(out, name);
                        out.push_str("\":");
                        out.push_str(value);
                        written.push(name);
                    }
                }
            }
        }
        out.push_str("}\n");
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut SpanFieldVisitor(&mut fields));
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            values.record(&mut SpanFieldVisitor(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let write = |line: &str| {
            let mut writer = self.make_writer.make_writer_for(event.metadata());
            let _ = writer.write_all(line.as_bytes());
        };
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                self.format(event, &ctx, &mut line);
                write(&line);
            }
            // An event logged while formatting another (e.g. from a Debug impl).
            Err(_) => {
                let mut line = String::new();
                self.format(event, &ctx, &mut line);
                write(&line);
            }
        });
    }
}
