//! Paging holds one page in memory: reading 10,000 users costs no more memory at its
//! peak than reading 2,000 (measured with dhat, which replaces the global allocator in
//! this test binary; the binary holds this one test so that the count is its own).

// The measured figures are printed for the record (`-- --nocapture`).
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use futures_util::StreamExt as _;
use keel_graph_client::emulator::{Emulator, TenantSeed};
use keel_graph_client::model::User;
use keel_graph_client::{GraphClient, GraphRequest};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Reads `n` users page by page, keeping only a count; returns the peak of the memory
/// allocated during the read and still in use (dhat counts from the profiler's start).
async fn peak_while_reading(client: &GraphClient, n: usize) -> usize {
    let profiler = dhat::Profiler::builder().testing().build();
    let mut stream = client
        .items::<User>("contoso", GraphRequest::get("/users").top(500))
        .take(n);
    let mut read = 0;
    while let Some(user) = stream.next().await {
        assert!(!user.unwrap().id.is_empty());
        read += 1;
    }
    assert_eq!(read, n);
    drop(stream);
    let peak = dhat::HeapStats::get().max_bytes;
    drop(profiler);
    peak
}

#[test]
fn paging_ten_thousand_users_holds_one_page_in_memory() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let graph = Emulator::builder()
            .tenant(
                TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", "contoso.onmicrosoft.com")
                    .client("app", "secret", ["User.Read.All"])
                    .users(10_000),
            )
            .start()
            .await
            .unwrap();
        let credential = ClientSecretCredential::new(
            Authority::Custom(graph.base_url().to_owned()),
            "contoso.onmicrosoft.com",
            "app",
            "secret",
        )
        .unwrap();
        let client = GraphClient::builder(graph.cloud())
            .tenant("contoso", Arc::new(CachingProvider::new(credential)))
            .build()
            .unwrap();
        // Warm up: the token, the connection, the pipeline's first allocations.
        peak_while_reading(&client, 600).await;
        let two_thousand = peak_while_reading(&client, 2_000).await;
        let ten_thousand = peak_while_reading(&client, 10_000).await;
        // What holding every user costs, for scale.
        let holding_all = {
            let profiler = dhat::Profiler::builder().testing().build();
            let all: Vec<User> = client
                .items::<User>("contoso", GraphRequest::get("/users").top(500))
                .map(Result::unwrap)
                .collect()
                .await;
            assert_eq!(all.len(), 10_000);
            let peak = dhat::HeapStats::get().max_bytes;
            drop(all);
            drop(profiler);
            peak
        };
        println!(
            "peak while paging: 2,000 users {two_thousand} B, 10,000 users {ten_thousand} B; collecting all 10,000: {holding_all} B"
        );
        assert!(ten_thousand * 2 < holding_all, "paging held as much as collecting");
        assert!(
            ten_thousand < two_thousand + two_thousand / 2,
            "memory grew with the number of users read: {two_thousand} B for 2,000, {ten_thousand} B for 10,000"
        );
    });
}
