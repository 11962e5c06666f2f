//! A real PostgreSQL per test: `initdb` into a temporary directory and a server on a free
//! loopback port, never the machine's own instance. The hub's shared-database tests run
//! several hubs against one of these.
//!
//! PostgreSQL refuses to run as root; when the tests run as root (CI does), the server and
//! its tools run as the `postgres` user the Debian package creates, through `runuser`.
//! Durability is PostgreSQL's default (`fsync` and `synchronous_commit` on): the hub
//! refuses a server without it, so the tests use what production needs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server, stopped (fast shutdown) and deleted when dropped.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    server: Child,
}

/// The hub database a test runs on: the SQLite file `dir/name`; or, when
/// `DOORSTEP_TEST_BACKEND=postgres` (the test command's PostgreSQL pass), a new database
/// on this test process's own PostgreSQL, as its URL. The hub takes either as
/// `hub.database`, so one test checks both backends.
pub fn hub_database(dir: &Path, name: &str) -> PathBuf {
    if std::env::var("DOORSTEP_TEST_BACKEND").is_ok_and(|b| b == "postgres") {
        return PathBuf::from(Postgres::shared().fresh_database());
    }
    dir.join(name)
}

/// The directory with `initdb`, `postgres` and `psql` of the newest installed major
/// version (Debian: `/usr/lib/postgresql/<major>/bin`).
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program args...`, as the `postgres` user when this process is root.
fn command(program: &Path, args: &[&str]) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Postgres {
    /// Creates a cluster and starts its server. Fails with how to install PostgreSQL when
    /// it is missing.
    pub fn start() -> Self {
        Self::start_listening("127.0.0.1", None)
    }

    /// A server listening on `listen` (`*` for every address), trusting connections from
    /// `network` (CIDR) as well as loopback: for hubs on other "hosts" (network
    /// namespaces) reaching it over their veth links.
    pub fn start_listening(listen: &str, network: Option<&str>) -> Self {
        Self::start_configured(listen, network, &[])
    }

    /// A server on loopback with extra `name=value` settings (`-c`), e.g. a benchmark's
    /// `shared_preload_libraries=pg_stat_statements`.
    pub fn start_with(settings: &[&str]) -> Self {
        Self::start_configured("127.0.0.1", None, settings)
    }

    fn start_configured(listen: &str, network: Option<&str>, settings: &[&str]) -> Self {
        let bin = bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is missing (no /usr/lib/postgresql/<version>/bin/initdb): run `bash scripts/test.sh`, \
                 which installs Debian's postgresql, or `apt-get install postgresql`"
            )
        });
        let dir = tempfile::Builder::new().prefix("doorstep-pg-").tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        if running_as_root() {
            let chown = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status();
            assert!(chown.is_ok_and(|s| s.success()), "chown the cluster directory to postgres");
        }
        let data_arg = data.to_str().expect("a UTF-8 path");
        let init = command(
            &bin.join("initdb"),
            &["-D", data_arg, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        )
        .output()
        .expect("run initdb");
        check("initdb", &init);
        if let Some(network) = network {
            let hba = data.join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            rules.push_str(&format!("host all all {network} trust\n"));
            std::fs::write(&hba, rules).expect("write pg_hba.conf");
        }
        let port = free_port();
        let socket_dir = dir.path().to_str().expect("a UTF-8 path");
        let (port_arg, listen_arg) = (port.to_string(), format!("listen_addresses={listen}"));
        let socket_arg = format!("unix_socket_directories={socket_dir}");
        let mut args = vec!["-D", data_arg, "-p", &port_arg, "-c", &listen_arg, "-c", &socket_arg];
        args.extend(["-c", "max_connections=100"]);
        for setting in settings {
            args.extend(["-c", setting]);
        }
        let server = command(&bin.join("postgres"), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let pg = Postgres { dir, bin, port, server };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && pg.try_psql("SELECT 1").is_some() {
                return pg;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn run_psql(&self, sql: &str) -> std::io::Result<Output> {
        self.run_psql_in("postgres", sql)
    }

    fn run_psql_in(&self, db: &str, sql: &str) -> std::io::Result<Output> {
        let port = self.port.to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-tAq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ];
        command(&self.bin.join("psql"), &args).output()
    }

    fn try_psql(&self, sql: &str) -> Option<String> {
        let out = self.run_psql(sql).ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `sql` with psql in the `postgres` database and returns what it printed
    /// (unaligned, tuples only). Panics with PostgreSQL's message when it fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.run_psql(sql).expect("run psql");
        check(&format!("psql {sql:?}"), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `sql` with psql in database `db`, as [`Postgres::psql`] does in `postgres`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = self.run_psql_in(db, sql).expect("run psql");
        check(&format!("psql -d {db} {sql:?}"), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates an empty database and returns its connection URL: tests sharing one
    /// server each take their own.
    pub fn database(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// The server's process id (the postmaster, from its `postmaster.pid`): its backends
    /// are its children, so a benchmark can count this server's CPU and no other's.
    pub fn postmaster_pid(&self) -> u32 {
        let pid_file =
            std::fs::read_to_string(self.data_dir().join("postmaster.pid")).expect("postmaster.pid");
        pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid on postmaster.pid's first line")
    }

    /// One server for the whole test process, started on first use: for suites that run
    /// many short tests, each on a database of its own ([`Postgres::fresh_database`]).
    /// Statics are never dropped, so a watchdog process stops the server and removes its
    /// directory when this process exits, however it exits.
    #[expect(
        clippy::zombie_processes,
        reason = "the watchdog outlives this process: it stops the server after"
    )]
    pub fn shared() -> &'static Postgres {
        static SHARED: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let pg = Postgres::start();
            let watchdog = format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -INT {server} 2>/dev/null; \
                 sleep 3; kill -KILL {server} 2>/dev/null; rm -rf '{dir}'",
                me = std::process::id(),
                server = pg.server.id(),
                dir = pg.dir.path().display(),
            );
            Command::new("sh")
                .args(["-c", &watchdog])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the shared PostgreSQL's watchdog");
            pg
        })
    }

    /// A new, empty database with a name of its own, and its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.database(&format!("test_{}_{n}", std::process::id()))
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown: sessions end, the server writes a checkpoint and exits.
        let data = self.data_dir();
        let stopped = data.to_str().map(|data| {
            command(&self.bin.join("pg_ctl"), &["-D", data, "-m", "fast", "-w", "-t", "20", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        });
        if !matches!(stopped, Some(Ok(s)) if s.success()) {
            let _ = self.server.kill();
        }
        let _ = self.server.wait();
    }
}
