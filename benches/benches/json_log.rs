//! One JSON log event through Keel's `JsonLayer` against tracing-subscriber's own JSON
//! formatter, both writing to a sink, for the same event inside the same two spans.
//!
//! tracing-subscriber's formatter nests event fields under `fields` and spans under
//! `span`/`spans`; Keel's flattens all of them and adds the correlation scope, so Keel's
//! line carries more at the top level.
//!
//! `cargo bench -p keel-benches --bench json_log`

#[path = "support/mod.rs"]
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_observability::{JsonLayer, RequestContext};
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

fn log_one(i: u64) {
    tracing::info!(user = "ada", attempt = i, cached = false, "order placed");
}

fn run(c: &mut Criterion, name: &str, dispatch: &Dispatch, with_context: bool) {
    tracing::dispatcher::with_default(dispatch, || {
        let outer = tracing::info_span!("http_request", method = "GET", path = "/orders/42");
        let _outer = outer.enter();
        let inner = tracing::info_span!("load_order", order_id = 42_u64);
        let _inner = inner.enter();
        let context = RequestContext::new();
        let mut i = 0_u64;
        let mut bench = |c: &mut Criterion| {
            c.bench_function(name, |b| {
                b.iter(|| {
                    i += 1;
                    log_one(i);
                });
            });
        };
        if with_context {
            context.sync_scope(|| bench(c));
        } else {
            bench(c);
        }
    });
}

fn benches(c: &mut Criterion) {
    let keel = Dispatch::new(tracing_subscriber::registry().with(JsonLayer::new(std::io::sink)));
    let peer = Dispatch::new(
        tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::sink),
        ),
    );
    run(c, "json_event/tracing_subscriber_json", &peer, false);
    run(c, "json_event/keel_json_layer", &keel, false);
    run(c, "json_event/keel_json_layer+correlation", &keel, true);
}

criterion_group! {
    name = json_log;
    config = support::criterion();
    targets = benches
}
criterion_main!(json_log);
