//! The testkit's own tests: each server starts, answers, stops, and leaves no process
//! behind.

use keel_testkit::{PostgresServer, RedisCluster, RedisServer, Reply};

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        })
        .unwrap_or(false)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn redis_starts_answers_and_leaves_nothing_behind() {
    let redis = RedisServer::start().expect("redis starts");
    let (pid, port) = (redis.pid().expect("running"), redis.port());
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(
        redis.command(&["SET", "k", "v"]).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(redis.command(&["GET", "k"]).unwrap().as_text(), Some("v"));
    // Bound to loopback only, with persistence off.
    let save = redis.command(&["CONFIG", "GET", "save"]).unwrap();
    assert_eq!(
        save,
        Reply::Array(Some(vec![
            Reply::Bulk(Some(b"save".to_vec())),
            Reply::Bulk(Some(Vec::new()))
        ]))
    );
    drop(redis);
    assert!(!process_alive(pid), "redis-server {pid} survived drop");
    assert!(!port_open(port), "port {port} still open after drop");
}

#[test]
fn two_redis_servers_never_share_a_port() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    a.command(&["SET", "only-in-a", "1"]).unwrap();
    assert_eq!(
        b.command(&["EXISTS", "only-in-a"]).unwrap().as_integer(),
        Some(0)
    );
}

#[test]
fn redis_stops_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start().unwrap();
    let port = redis.port();
    redis.stop();
    assert!(!redis.is_running());
    assert!(
        redis.command(&["PING"]).is_err(),
        "a stopped server must not answer"
    );
    redis.restart().unwrap();
    assert_eq!(redis.port(), port);
    assert_eq!(
        redis.command(&["PING"]).unwrap(),
        Reply::Status("PONG".into())
    );
}

#[test]
fn redis_is_stopped_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let redis = RedisServer::start().unwrap();
        tx.send(redis.pid().unwrap()).unwrap();
        panic!("test failure while the server runs");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv().unwrap();
    assert!(
        !process_alive(pid),
        "redis-server {pid} survived a panicking test"
    );
}

#[test]
fn redis_cluster_of_three_masters_serves_every_slot() {
    let cluster = RedisCluster::start(3).expect("cluster starts");
    assert_eq!(cluster.nodes().len(), 3);
    let pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid().unwrap()).collect();
    let info = cluster.nodes()[0].command(&["CLUSTER", "INFO"]).unwrap();
    let info = info.as_text().unwrap().to_owned();
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_known_nodes:3"), "{info}");
    // A key lands on exactly one node; the others redirect with MOVED.
    let replies: Vec<Reply> = cluster
        .nodes()
        .iter()
        .map(|n| n.command(&["SET", "some-key", "x"]).unwrap())
        .collect();
    let ok = replies
        .iter()
        .filter(|r| **r == Reply::Status("OK".into()))
        .count();
    let moved = replies
        .iter()
        .filter(|r| matches!(r, Reply::Error(e) if e.starts_with("MOVED")))
        .count();
    assert_eq!((ok, moved), (1, 2), "{replies:?}");
    drop(cluster);
    for pid in pids {
        assert!(!process_alive(pid), "cluster node {pid} survived drop");
    }
}

#[test]
fn postgres_starts_answers_and_leaves_nothing_behind() {
    let pg = PostgresServer::start().expect("postgres starts");
    let (pid, port) = (pg.pid().expect("running"), pg.port());
    assert!(pg.is_running());
    assert_eq!(pg.psql("SELECT 40 + 2").unwrap(), "42");
    pg.psql("CREATE TABLE t (id int primary key)").unwrap();
    pg.psql("INSERT INTO t VALUES (1), (2)").unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM t").unwrap(), "2");
    assert_eq!(pg.psql("SHOW listen_addresses").unwrap(), "127.0.0.1");
    let err = pg.psql("SELECT * FROM missing_table").unwrap_err();
    assert!(err.to_string().contains("missing_table"), "{err}");
    drop(pg);
    assert!(!process_alive(pid), "postgres {pid} survived drop");
    assert!(!port_open(port), "port {port} still open after drop");
}

#[test]
fn postgres_stops_and_restarts_with_its_data() {
    let mut pg = PostgresServer::start().unwrap();
    pg.psql("CREATE TABLE kept (v text)").unwrap();
    pg.psql("INSERT INTO kept VALUES ('survives')").unwrap();
    pg.psql("CHECKPOINT").unwrap();
    pg.stop();
    assert!(!pg.is_running());
    assert!(
        pg.psql("SELECT 1").is_err(),
        "a stopped server must not answer"
    );
    pg.restart().unwrap();
    assert_eq!(pg.psql("SELECT v FROM kept").unwrap(), "survives");
}
