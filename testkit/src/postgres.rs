//! Private PostgreSQL clusters made with `initdb` and run with `pg_ctl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::binary::{self, log_tail};
use crate::error::{Result, TestkitError};
use crate::net;

const PACKAGE: &str = "postgresql";
const START_ATTEMPTS: usize = 5;
/// `initdb` refuses to run as root; Debian's package creates this user.
const SERVICE_USER: &str = "postgres";

/// A private PostgreSQL server: a fresh cluster made by `initdb` in a temporary folder,
/// listening on a random port on 127.0.0.1 only, with `trust` authentication for the
/// `postgres` superuser and durability settings off (these are throwaway test servers).
/// Stopped and deleted on drop.
///
/// ```no_run
/// let pg = keel_testkit::PostgresServer::start()?;
/// assert_eq!(pg.psql("SELECT 1 + 1")?, "2");
/// let url = pg.url(); // postgres://postgres@127.0.0.1:<port>/postgres
/// # Ok::<(), keel_testkit::TestkitError>(())
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
    run_as: Option<String>,
    running: bool,
}

impl PostgresServer {
    /// Runs `initdb`, starts the server with `pg_ctl` and waits until it accepts
    /// connections.
    ///
    /// # Errors
    /// [`TestkitError::MissingBinary`] when PostgreSQL is not installed;
    /// [`TestkitError::CommandFailed`] when `initdb` or `pg_ctl` fails.
    pub fn start() -> Result<Self> {
        let bin_dir = find_bin_dir()?;
        let run_as = if running_as_root() {
            // runuser comes with util-linux; check the service user exists.
            binary::find("runuser", "util-linux", &[PathBuf::from("/usr/sbin")])?;
            Some(SERVICE_USER.to_owned())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("keel-postgres-")
            .tempdir()
            .map_err(TestkitError::io("creating a temporary folder for postgres"))?;
        if run_as.is_some() {
            let (uid, gid) = user_ids(SERVICE_USER)?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(
                TestkitError::io("giving the postgres folder to the postgres user"),
            )?;
        }
        let mut server = PostgresServer {
            port: 0,
            bin_dir,
            dir,
            run_as,
            running: false,
        };
        let data = server.data_dir();
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        binary::run(&mut initdb)?;

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = net::free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::NotReady {
            server: "postgres".into(),
            waited: Duration::from_secs(30),
            log: String::new(),
        }))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of PostgreSQL's programs, run as the service user when needed.
    fn command(&self, program: &str) -> Command {
        let program = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.stdin(Stdio::null()).current_dir(self.dir.path());
        command
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30", "-o", &options, "start"]);
        // pg_ctl leaves the server running in the background; its stdout must not be a
        // pipe we wait on, or `output()` would block until the server exits.
        start.stdout(Stdio::null()).stderr(Stdio::null());
        let status = start
            .status()
            .map_err(TestkitError::io("running pg_ctl start"))?;
        let port = self.port;
        if status.success()
            && net::wait_until(Duration::from_secs(10), || net::accepts(port), || false)
        {
            self.running = true;
            Ok(())
        } else {
            self.pg_ctl_stop();
            Err(TestkitError::NotReady {
                server: format!("postgres on port {port}"),
                waited: Duration::from_secs(30),
                log: log_tail(&self.log_path(), 2000),
            })
        }
    }

    fn pg_ctl_stop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let stopped = stop.status().is_ok_and(|s| s.success());
        if !stopped {
            // Last resort: kill the postmaster so nothing is left behind.
            if let Some(pid) = self.pid() {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        self.running = false;
    }

    /// The loopback port the server listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`, for any PostgreSQL driver.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Whether the server is running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.running && self.pid().is_some_and(binary::process_alive)
    }

    /// Runs one SQL statement with `psql` and returns its unaligned, tuples-only output.
    ///
    /// # Errors
    /// [`TestkitError::CommandFailed`] when `psql` fails (SQL error, server down).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let psql = self.bin_dir.join("psql");
        let mut command = Command::new(psql);
        command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .stdin(Stdio::null());
        let output = binary::run(&mut command)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`, as a crash would). The data
    /// folder and the port number are kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if self.running {
            self.pg_ctl_stop();
        }
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    ///
    /// # Errors
    /// [`TestkitError::NotReady`] when it does not come back.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.pg_ctl_start()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_bin_dir() -> Result<PathBuf> {
    // Debian keeps the server programs in /usr/lib/postgresql/<version>/bin, off PATH.
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versioned.sort();
    let extra: Vec<PathBuf> = versioned.into_iter().rev().map(|(_, bin)| bin).collect();
    let initdb = binary::find("initdb", PACKAGE, &extra)?;
    binary::find("pg_ctl", PACKAGE, &extra)?;
    Ok(initdb.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn user_ids(user: &str) -> Result<(u32, u32)> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(TestkitError::io("reading /etc/passwd"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&user))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .ok_or_else(|| TestkitError::MissingBinary {
            binary: "postgres (user account)",
            package: PACKAGE,
            searched: "/etc/passwd".into(),
        })
}
