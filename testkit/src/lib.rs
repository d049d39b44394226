//! # keel-testkit
//!
//! Real servers for Keel's tests: a private `redis-server`, a private Redis Cluster and a
//! private PostgreSQL, each on a random loopback port in its own temporary folder.
//!
//! Every server is started by the test that needs it, answers before the constructor
//! returns, and is stopped and deleted when its handle is dropped — also when the test
//! panics, because unwinding runs `Drop`. No shared server and no default port is ever
//! used, so tests can run in parallel.
//!
//! ```no_run
//! use keel_testkit::RedisServer;
//!
//! let redis = RedisServer::start()?;
//! redis.command(&["SET", "greeting", "hello"])?;
//! assert_eq!(redis.command(&["GET", "greeting"])?.as_text(), Some("hello"));
//! println!("tests can connect to {}", redis.url());
//! // dropped here: the server is killed and its folder removed
//! # Ok::<(), keel_testkit::TestkitError>(())
//! ```
//!
//! The binaries come from Debian's packages (`redis-server`, `postgresql`); when one is
//! missing the error names the package to install. PostgreSQL's `initdb` refuses to run
//! as root, so when the tests run as root the testkit runs `initdb` and `pg_ctl` as the
//! unprivileged `postgres` user the Debian package creates.
//!
//! The calls are synchronous on purpose: they work the same from `#[test]` and
//! `#[tokio::test]` and need no runtime.

mod binary;
mod error;
mod net;
mod postgres;
mod proxy;
mod redis;
mod resp;

pub use error::{Result, TestkitError};
pub use postgres::PostgresServer;
pub use proxy::TcpProxy;
pub use redis::{RedisCluster, RedisServer};
pub use resp::Reply;
