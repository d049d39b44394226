//! Runs a command with a private redis-server and PostgreSQL started for it, their URLs
//! in `REDIS_URL` and `DATABASE_URL`; both are stopped and removed afterwards. CI runs
//! the examples' smoke scenarios against real servers this way.
//!
//! ```text
//! cargo run -p keel-testkit --bin with-servers -- cargo run -p keel-examples --example planner_service -- --smoke
//! ```

use std::process::{Command, ExitCode};

use keel_testkit::{PostgresServer, RedisServer};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: with-servers COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let redis = match RedisServer::start() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("with-servers: redis-server: {e}");
            return ExitCode::from(2);
        }
    };
    let postgres = match PostgresServer::start() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("with-servers: PostgreSQL: {e}");
            return ExitCode::from(2);
        }
    };
    let status = Command::new(program)
        .args(args)
        .env("REDIS_URL", redis.url())
        .env("DATABASE_URL", postgres.url())
        .status();
    // The servers stop when dropped, whatever the command did.
    drop((redis, postgres));
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("with-servers: the command failed: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("with-servers: could not run the command: {e}");
            ExitCode::from(2)
        }
    }
}
