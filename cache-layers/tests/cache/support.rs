//! Real Redis topologies for the shared-cache suite.

use std::time::{Duration, Instant};

use keel_cache_layers::{Cache, CacheBuilder, RedisL2};
use keel_testkit::{RedisCluster, RedisServer, TcpProxy};

/// Runs each named `async fn(Topology)` twice: on a single node and on a 3-node cluster.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Topology::single()).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Topology::cluster()).await;
                }
            )*
        }
    };
}
pub(crate) use suite;

/// A single node or a cluster, started for one test.
pub(crate) enum Topology {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Topology {
    pub(crate) fn single() -> Self {
        Topology::Single(RedisServer::start().expect("redis-server"))
    }

    pub(crate) fn cluster() -> Self {
        Topology::Cluster(RedisCluster::start(3).expect("redis cluster"))
    }

    /// A fresh L2 handle (each cache instance gets its own connections).
    pub(crate) async fn l2(&self) -> RedisL2 {
        match self {
            Topology::Single(s) => RedisL2::single(&s.url()).unwrap(),
            Topology::Cluster(c) => RedisL2::cluster(c.urls()).await.unwrap(),
        }
    }

    /// An L2 cut off from the backplane (and, single-node, from everything) by `proxy`.
    pub(crate) async fn l2_through(&self, proxy: &TcpProxy) -> RedisL2 {
        let url = format!("redis://{}", proxy.addr());
        match self {
            Topology::Single(_) => RedisL2::single(&url).unwrap(),
            Topology::Cluster(c) => RedisL2::cluster(c.urls())
                .await
                .unwrap()
                .backplane_nodes([url])
                .unwrap(),
        }
    }

    /// A proxy in front of the (first) node.
    pub(crate) fn proxy(&self) -> TcpProxy {
        let port = match self {
            Topology::Single(s) => s.port(),
            Topology::Cluster(c) => c.nodes()[0].port(),
        };
        TcpProxy::start(([127, 0, 0, 1], port).into()).unwrap()
    }

    pub(crate) fn stop(&mut self) {
        match self {
            Topology::Single(s) => s.stop(),
            Topology::Cluster(c) => c.nodes_mut().iter_mut().for_each(RedisServer::stop),
        }
    }

    pub(crate) fn restart(&mut self) {
        match self {
            Topology::Single(s) => s.restart().unwrap(),
            Topology::Cluster(c) => {
                for node in c.nodes_mut() {
                    node.restart().unwrap();
                }
                // The cluster is back when every node says so again.
                let deadline = Instant::now() + Duration::from_secs(30);
                while !c.nodes().iter().all(|n| {
                    n.command(&["CLUSTER", "INFO"])
                        .ok()
                        .and_then(|r| r.as_text().map(|t| t.contains("cluster_state:ok")))
                        .unwrap_or(false)
                }) {
                    assert!(Instant::now() < deadline, "the cluster did not come back");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// A plain redis-rs connection, to look at or tamper with L2 from outside.
    pub(crate) async fn raw(&self) -> Raw {
        match self {
            Topology::Single(s) => Raw::Single(
                redis::Client::open(s.url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            ),
            Topology::Cluster(c) => Raw::Cluster(
                redis::cluster::ClusterClient::new(c.urls())
                    .unwrap()
                    .get_async_connection()
                    .await
                    .unwrap(),
            ),
        }
    }
}

pub(crate) enum Raw {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Raw {
    /// The L2 key of `key` in the namespace's current generation (none before the
    /// backplane first touched Redis).
    pub(crate) async fn entry_key(
        &mut self,
        namespace: &str,
        schema: u32,
        key: &str,
    ) -> Option<String> {
        let generation: Option<u64> = self
            .query(redis::cmd("GET").arg(format!("keel:{{{namespace}}}:gen")))
            .await
            .ok()
            .flatten();
        generation.map(|g| format!("keel:{namespace}:v{schema}:g{g}:k:{key}"))
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Raw::Single(c) => cmd.query_async(c).await,
            Raw::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// A builder for a test cache of strings on `l2`, catching up every 200 ms.
pub(crate) fn builder(namespace: &str, l2: RedisL2) -> CacheBuilder<String> {
    Cache::<String>::builder(namespace)
        .catch_up_interval(Duration::from_millis(200))
        .l2(l2)
}

/// Waits until the backplane is connected and caught up.
pub(crate) async fn connected(cache: &Cache<String>) {
    eventually(Duration::from_secs(20), || {
        cache.backplane_status().is_some_and(|s| s.connected)
    })
    .await;
}

pub(crate) async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
