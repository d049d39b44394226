//! A delta round holds one page in memory: a full round of 100,000 users costs no more
//! memory at its peak than one of 20,000 (measured with dhat, which replaces the global
//! allocator in this test binary; the binary holds this one test so that the count is
//! its own). The emulator serves from the same process; its users are seeded before
//! the profiler starts.

// The measured figures are printed for the record (`-- --nocapture`).
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use keel_graph_client::GraphClient;
use keel_graph_client::delta::{DeltaPage, DeltaQuery, DeltaTracker, MemoryDeltaStore};
use keel_graph_client::emulator::{Emulator, TenantSeed};
use keel_graph_client::model::User;
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// A full round of `tenant`'s users, counting them; the peak of the memory allocated
/// during the round and still in use.
async fn peak_of_full_round(client: &GraphClient, tenant: &str, expected: u64) -> usize {
    let tracker = DeltaTracker::new(
        client.clone(),
        tenant,
        DeltaQuery::users().select(["displayName"]).page_size(999),
        Arc::new(MemoryDeltaStore::new()),
        tenant,
    );
    let profiler = dhat::Profiler::builder().testing().build();
    let mut seen = 0u64;
    let round = tracker
        .round(|page: DeltaPage<User>| {
            seen += page.changed.len() as u64;
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap();
    assert_eq!((round.changed, seen), (expected, expected));
    let peak = dhat::HeapStats::get().max_bytes;
    drop(profiler);
    peak
}

#[test]
fn a_delta_round_of_a_hundred_thousand_users_holds_one_page_in_memory() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let graph = Emulator::builder()
            .tenant(
                TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", "contoso.onmicrosoft.com")
                    .client("app", "secret", ["User.Read.All"])
                    .users(100_000),
            )
            .tenant(
                TenantSeed::new("3c9e8d7f-6a5b-4c3d-9e2f-1a0b9c8d0002", "fabrikam.onmicrosoft.com")
                    .client("app", "secret", ["User.Read.All"])
                    .users(20_000),
            )
            .start()
            .await
            .unwrap();
        let provider = |domain: &str| {
            Arc::new(CachingProvider::new(
                ClientSecretCredential::new(
                    Authority::Custom(graph.base_url().to_owned()),
                    domain,
                    "app",
                    "secret",
                )
                .unwrap(),
            ))
        };
        let client = GraphClient::builder(graph.cloud())
            .tenant("contoso", provider("contoso.onmicrosoft.com"))
            .tenant("fabrikam", provider("fabrikam.onmicrosoft.com"))
            .build()
            .unwrap();
        // Warm up: the tokens, the connection, the pipeline's first allocations.
        peak_of_full_round(&client, "fabrikam", 20_000).await;
        let twenty_thousand = peak_of_full_round(&client, "fabrikam", 20_000).await;
        let hundred_thousand = peak_of_full_round(&client, "contoso", 100_000).await;
        println!(
            "peak during a full delta round: 20,000 users {twenty_thousand} B, 100,000 users {hundred_thousand} B"
        );
        assert!(
            hundred_thousand < twenty_thousand + twenty_thousand / 2,
            "memory grew with the number of users: {twenty_thousand} B for 20,000, {hundred_thousand} B for 100,000"
        );
    });
}
