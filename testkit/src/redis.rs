//! Private `redis-server` instances and Redis Clusters.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::binary::{self, log_tail};
use crate::error::{Result, TestkitError};
use crate::net;
use crate::resp::{self, Reply};

const PACKAGE: &str = "redis-server";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 5;

fn redis_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")]
}

/// A private `redis-server` on a random loopback port, in its own temporary folder,
/// with persistence off. Killed and deleted on drop.
///
/// ```no_run
/// let mut redis = keel_testkit::RedisServer::start()?;
/// let url = redis.url(); // redis://127.0.0.1:<port>
/// redis.stop();          // simulate an outage
/// redis.restart()?;      // same port, empty data
/// # Ok::<(), keel_testkit::TestkitError>(())
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    binary: PathBuf,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers `PING`.
    ///
    /// # Errors
    /// [`TestkitError::MissingBinary`] when `redis-server` is not installed,
    /// [`TestkitError::NotReady`] when it does not answer within 15 s.
    pub fn start() -> Result<Self> {
        Self::start_with_args(&[], 0)
    }

    /// Starts a server with extra `redis-server` arguments. `bus_offset` > 0 asks for a
    /// port whose `port + bus_offset` is free as well (cluster nodes).
    pub(crate) fn start_with_args(extra_args: &[String], bus_offset: u16) -> Result<Self> {
        let binary = binary::find("redis-server", PACKAGE, &redis_dirs())?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = if bus_offset == 0 {
                net::free_port()?
            } else {
                net::free_port_pair(bus_offset)?
            };
            let dir = tempfile::Builder::new()
                .prefix("keel-redis-")
                .tempdir()
                .map_err(TestkitError::io("creating a temporary folder for redis"))?;
            let mut server = RedisServer {
                port,
                binary: binary.clone(),
                dir,
                extra_args: extra_args.to_vec(),
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // Another process may have taken the port between our probe and the
                // server's bind: try another port.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::NotReady {
            server: "redis-server".into(),
            waited: READY_TIMEOUT,
            log: String::new(),
        }))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .map_err(TestkitError::io("spawning redis-server"))?;
        self.child = Some(child);
        let port = self.port;
        let ready = net::wait_until(
            READY_TIMEOUT,
            || matches!(resp::command(port, &["PING"]), Ok(Reply::Status(s)) if s == "PONG"),
            || self.has_exited(),
        );
        if ready {
            Ok(())
        } else {
            self.stop();
            Err(TestkitError::NotReady {
                server: format!("redis-server on port {port}"),
                waited: READY_TIMEOUT,
                log: log_tail(&self.log_path(), 2000),
            })
        }
    }

    fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The loopback port the server listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, for redis-rs and other clients.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        !self.has_exited()
    }

    /// Sends one command on a fresh connection and returns the reply. A Redis error
    /// reply is returned as [`Reply::Error`], not as `Err`.
    ///
    /// # Errors
    /// [`TestkitError::Io`] when the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Result<Reply> {
        resp::command(self.port, args)
    }

    /// Kills the server (as a crash would) and waits for it to exit. Data is lost; the
    /// folder and the port number are kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    ///
    /// # Errors
    /// [`TestkitError::NotReady`] when it does not come back (the port may have been
    /// taken by another process meanwhile).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Redis Cluster of several master nodes on loopback, without replicas. Every
/// node is killed and deleted on drop.
///
/// ```no_run
/// let cluster = keel_testkit::RedisCluster::start(3)?;
/// let seeds: Vec<String> = cluster.urls(); // give these to a cluster client
/// # Ok::<(), keel_testkit::TestkitError>(())
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// Redis Cluster's bus port is the client port plus this.
const CLUSTER_BUS_OFFSET: u16 = 10_000;

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as Redis requires), joins them with
    /// `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    ///
    /// # Errors
    /// [`TestkitError::MissingBinary`] when `redis-server` or `redis-cli` is missing;
    /// [`TestkitError::CommandFailed`] when the cluster cannot be created;
    /// [`TestkitError::NotReady`] when it does not settle within 30 s.
    pub fn start(masters: usize) -> Result<Self> {
        let masters = masters.max(3);
        let cli = binary::find("redis-cli", "redis-tools", &redis_dirs())?;
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(RedisServer::start_with_args(
                &[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "5000".into(),
                ],
                CLUSTER_BUS_OFFSET,
            )?);
        }
        let mut create = Command::new(cli);
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null());
        binary::run(&mut create)?;

        let cluster = RedisCluster { nodes };
        let settled = net::wait_until(
            Duration::from_secs(30),
            || cluster.nodes.iter().all(RedisCluster::node_ok),
            || false,
        );
        if !settled {
            return Err(TestkitError::NotReady {
                server: "redis cluster".into(),
                waited: Duration::from_secs(30),
                log: cluster
                    .nodes
                    .first()
                    .map(|n| log_tail(&n.log_path(), 2000))
                    .unwrap_or_default(),
            });
        }
        Ok(cluster)
    }

    fn node_ok(node: &RedisServer) -> bool {
        matches!(
            node.command(&["CLUSTER", "INFO"]),
            Ok(reply) if reply.as_text().is_some_and(|t| t.contains("cluster_state:ok"))
        )
    }

    /// The nodes, to inspect or stop one of them.
    #[must_use]
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes, to stop and restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// One `redis://127.0.0.1:<port>` URL per node: the seed list for a cluster client.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
