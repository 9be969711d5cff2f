//! The private PostgreSQL: a cluster of our own under the data folder, for a machine that has
//! PostgreSQL's server programs but no server set up (API.md, "The private PostgreSQL").
//!
//! Layout of `MOVIESTORE_DATA_DIR`:
//! - `postgres/`: the cluster (owned by the account that runs it; its Unix socket lives here too),
//! - `postgres.password`: the superuser's password, readable by the invoking user only,
//! - `postgres.lock`: held while a process creates, starts, adopts or stops the cluster,
//! - `postgres.owner`: the pid of the process that stops the cluster when it exits.
//!
//! The first process to need the cluster starts it and owns it; others with the same data folder
//! join it (they read its port from `postmaster.pid`). A cluster left running by an owner that
//! died (kill -9) is adopted by the next process; a `postmaster.pid` left by a server that is gone
//! is removed before starting. Started as root, the server programs run as the `postgres` account
//! (or `nobody`), since PostgreSQL refuses to run as root.
//!
//! Linux only: liveness and process names are read from `/proc`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The superuser and database of the private cluster.
pub const SUPERUSER: &str = "moviestore";

/// Where the server programs were looked for, and what to do about it, when none were found.
#[derive(Debug)]
pub struct NoServerPrograms {
    /// Every folder searched, in order.
    pub searched: Vec<PathBuf>,
}

impl std::fmt::Display for NoServerPrograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let searched: Vec<String> = self.searched.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            "no PostgreSQL server programs (initdb, pg_ctl) found; searched {}. Install them \
             (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; \
             macOS: brew install postgresql@15) or name their folder with MOVIESTORE_PG_BIN; \
             or use a server of your own with DATABASE_URL, or `docker compose up`",
            if searched.is_empty() { "nothing".to_string() } else { searched.join(", ") }
        )
    }
}

impl std::error::Error for NoServerPrograms {}

/// Finds the folder holding `initdb` and `pg_ctl`: `explicit` (`MOVIESTORE_PG_BIN`) alone when
/// given; otherwise `pg_config --bindir`, then the usual install folders, newest version first.
pub fn find_server_programs(explicit: Option<&Path>) -> Result<PathBuf, NoServerPrograms> {
    let has_programs = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let mut searched = Vec::new();
    if let Some(dir) = explicit {
        if has_programs(dir) {
            return Ok(dir.to_path_buf());
        }
        searched.push(dir.to_path_buf());
        return Err(NoServerPrograms { searched });
    }
    let mut candidates = Vec::new();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        if output.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
        }
    }
    for root in ["/usr/lib/postgresql", "/usr/local/pgsql", "/opt/homebrew/opt", "/usr/pgsql"] {
        let mut versions: Vec<PathBuf> =
            fs::read_dir(root).map(|dir| dir.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        // Newest first: "15" after "9.6" needs a numeric sort of the leading number.
        versions.sort_by_key(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let digits: String =
                name.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
            std::cmp::Reverse(digits.parse::<u32>().unwrap_or(0))
        });
        candidates.extend(versions.into_iter().map(|v| v.join("bin")));
    }
    candidates.extend(["/usr/local/pgsql/bin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    for dir in candidates {
        if has_programs(&dir) {
            return Ok(dir);
        }
        if !searched.contains(&dir) {
            searched.push(dir);
        }
    }
    Err(NoServerPrograms { searched })
}

/// The account the server programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

/// The account the cluster runs as: the invoking one, or, for root, `postgres` (or `nobody`).
pub fn server_account() -> anyhow::Result<Option<Account>> {
    if current_uid()? != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").context("could not read /etc/passwd")?;
    let find = |wanted: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == wanted).then(|| Account {
                name: wanted.to_string(),
                uid: fields[2].parse().unwrap_or(u32::MAX),
                gid: fields[3].parse().unwrap_or(u32::MAX),
            })
        })
    };
    match find("postgres").or_else(|| find("nobody")) {
        Some(account) if account.uid != u32::MAX && account.uid != 0 => Ok(Some(account)),
        _ => bail!(
            "started as root, the private PostgreSQL needs an unprivileged account to run as \
             (`postgres` or `nobody`), and this system has neither"
        ),
    }
}

fn current_uid() -> anyhow::Result<u32> {
    // The owner of our own /proc entry is the real user id of this process.
    Ok(fs::metadata("/proc/self").context("could not read /proc/self (Linux only)")?.uid())
}

/// A running private cluster this process uses; stopped on [`PrivatePostgres::stop`] or drop
/// when this process is its owner.
#[derive(Debug)]
pub struct PrivatePostgres {
    data_dir: PathBuf,
    bin: PathBuf,
    account: Option<Account>,
    port: u16,
    password: String,
    owner: bool,
    how: &'static str,
}

/// Server settings for a cluster started by this process (e.g. `fsync=off` for tests).
pub type Settings<'a> = &'a [(&'a str, &'a str)];

impl PrivatePostgres {
    /// Starts the cluster under `data_dir` (creating it on first use), or joins the one another
    /// process of the same data folder runs.
    pub fn start_or_join(data_dir: &Path, bin: &Path, settings: Settings<'_>) -> anyhow::Result<Self> {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("could not create the data folder {}", data_dir.display()))?;
        let data_dir = fs::canonicalize(data_dir)?;
        let account = server_account()?;
        let _lock = lock(&data_dir.join("postgres.lock"))?;
        let mut cluster = Self {
            bin: bin.to_path_buf(),
            account,
            port: 0,
            password: String::new(),
            owner: false,
            how: "joined",
            data_dir,
        };
        let created = !cluster.pgdata().join("PG_VERSION").is_file();
        if created {
            cluster.initdb()?;
        }
        cluster.password = read_password(&cluster.password_file())?;
        match cluster.running_port()? {
            Some(port) => {
                cluster.port = port;
                // Adopt a cluster whose owner is gone (killed): someone must stop it.
                if !owner_alive(&cluster.owner_file()) {
                    cluster.become_owner()?;
                    cluster.how = "adopted (its owner is gone)";
                }
            }
            None => {
                cluster.start(settings)?;
                cluster.become_owner()?;
                cluster.how = if created { "created and started" } else { "started" };
            }
        }
        Ok(cluster)
    }

    /// The cluster's data directory (`MOVIESTORE_DATA_DIR/postgres`).
    pub fn pgdata(&self) -> PathBuf {
        self.data_dir.join("postgres")
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How this process came to use the cluster: created and started, started, joined, adopted.
    pub fn how(&self) -> &'static str {
        self.how
    }

    /// Whether this process stops the cluster when it ends.
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// The URL of `database`, with the password.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    /// The URL of `database` to show in logs (no password).
    pub fn display_url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    fn password_file(&self) -> PathBuf {
        self.data_dir.join("postgres.password")
    }

    fn owner_file(&self) -> PathBuf {
        self.data_dir.join("postgres.owner")
    }

    fn program(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command
            .current_dir("/")
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .env("LC_ALL", "C.UTF-8");
        if let Some(account) = &self.account {
            // The server refuses to run as root; the std library also drops supplementary groups.
            command.uid(account.uid).gid(account.gid).env("USER", &account.name).env("HOME", &self.data_dir);
        }
        command
    }

    fn run(&self, mut command: Command, what: &str) -> anyhow::Result<()> {
        let output = command.output().with_context(|| format!("could not run {what}"))?;
        if !output.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Creates the cluster: a fresh password, the data directory owned by the server's account,
    /// `initdb` with password authentication for every connection.
    fn initdb(&self) -> anyhow::Result<()> {
        let pgdata = self.pgdata();
        if let Some(account) = &self.account {
            reachable_by(&self.data_dir, account)?;
        }
        // A half-made cluster from an interrupted first start is made again.
        if pgdata.exists() {
            fs::remove_dir_all(&pgdata).with_context(|| format!("could not clear {}", pgdata.display()))?;
        }
        fs::create_dir(&pgdata)?;
        fs::set_permissions(&pgdata, fs::Permissions::from_mode(0o700))?;
        let password = random_password()?;
        write_private(&self.password_file(), &password)?;
        // initdb reads the password from a file that its account can read; removed right after.
        let pwfile = self.data_dir.join("postgres.initial-password");
        write_private(&pwfile, &password)?;
        if let Some(account) = &self.account {
            std::os::unix::fs::chown(&pgdata, Some(account.uid), Some(account.gid))?;
            std::os::unix::fs::chown(&pwfile, Some(account.uid), Some(account.gid))?;
        }
        let mut initdb = self.program("initdb");
        initdb
            .arg("-D")
            .arg(&pgdata)
            .args(["-U", SUPERUSER, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = self.run(initdb, "initdb");
        let _ = fs::remove_file(&pwfile);
        result.context("could not create the private PostgreSQL cluster")?;
        Ok(())
    }

    /// The port of the cluster's running server, if one runs; a stale `postmaster.pid` (its
    /// process gone, or a process that is no PostgreSQL server) is removed.
    fn running_port(&self) -> anyhow::Result<Option<u16>> {
        let pid_file = self.pgdata().join("postmaster.pid");
        let Ok(contents) = fs::read_to_string(&pid_file) else { return Ok(None) };
        let mut lines = contents.lines();
        let pid: Option<u32> = lines.next().and_then(|l| l.trim().parse().ok());
        let port: Option<u16> = lines.nth(2).and_then(|l| l.trim().parse().ok());
        let server_alive = || pid.is_some_and(|pid| process_name(pid).as_deref() == Some("postgres"));
        if let (true, Some(pid), Some(port)) = (server_alive(), pid, port) {
            // Up and accepting connections (it may still be starting, or shutting down).
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && server_alive() {
                if TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
                    return Ok(Some(port));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if server_alive() {
                bail!(
                    "a PostgreSQL server runs on {} (pid {pid}) but does not accept connections on port {port}",
                    self.pgdata().display()
                );
            }
        }
        tracing::warn!(
            pid_file = %pid_file.display(),
            "removing a stale postmaster.pid (its server is gone)"
        );
        fs::remove_file(&pid_file).with_context(|| format!("could not remove {}", pid_file.display()))?;
        Ok(None)
    }

    /// Starts the server on a free port of 127.0.0.1 (and a Unix socket in its data directory,
    /// when the path fits), in a process group of its own, so a Ctrl-C meant for us reaches it
    /// only through our orderly stop.
    fn start(&mut self, settings: Settings<'_>) -> anyhow::Result<()> {
        let pgdata = self.pgdata();
        // Socket paths are limited to 107 bytes (sun_path) with the file name.
        let socket_dirs = if pgdata.as_os_str().len() + ".s.PGSQL.65535".len() < 100 {
            pgdata.display().to_string()
        } else {
            String::new()
        };
        let mut last_error = None;
        // A server killed with -9 can leave backends that still hold its shared memory for a
        // moment; starting again once they are gone succeeds.
        for _ in 0..10 {
            let port = free_port()?;
            let mut options =
                format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{socket_dirs}'");
            for (name, value) in settings {
                options.push_str(&format!(" -c {name}={value}"));
            }
            let mut pg_ctl = self.program("pg_ctl");
            pg_ctl
                .arg("-D")
                .arg(&pgdata)
                .args(["-w", "-t", "60", "-o", &options, "-l"])
                .arg(pgdata.join("server.log"))
                .arg("start")
                .process_group(0);
            match self.run(pg_ctl, "pg_ctl start") {
                Ok(()) => {
                    self.port = port;
                    return Ok(());
                }
                Err(error) => {
                    last_error = Some(error);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        let log = fs::read_to_string(pgdata.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("pg_ctl start failed"))).with_context(|| {
            format!("the private PostgreSQL did not start; its log ends with: {}", tail.join(" | "))
        })
    }

    fn become_owner(&mut self) -> anyhow::Result<()> {
        fs::write(self.owner_file(), std::process::id().to_string())
            .with_context(|| format!("could not write {}", self.owner_file().display()))?;
        self.owner = true;
        Ok(())
    }

    /// Stops the server when this process owns it (fast shutdown: open sessions are ended).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.owner {
            return Ok(());
        }
        self.owner = false;
        let _lock = lock(&self.data_dir.join("postgres.lock"))?;
        let mut pg_ctl = self.program("pg_ctl");
        pg_ctl.arg("-D").arg(self.pgdata()).args(["-m", "fast", "-w", "-t", "60", "stop"]);
        let result = self.run(pg_ctl, "pg_ctl stop");
        let _ = fs::remove_file(self.owner_file());
        result?;
        tracing::info!("stopped the private PostgreSQL");
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(%error, "could not stop the private PostgreSQL");
        }
    }
}

/// An exclusive lock on `path`, released when the file is closed.
fn lock(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))?;
    file.lock().with_context(|| format!("could not lock {}", path.display()))?;
    Ok(file)
}

/// The name of a live process (not a zombie), from `/proc`.
fn process_name(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) STATE ..."; comm may hold spaces and parentheses, so split at the last ')'.
    let (head, tail) = stat.rsplit_once(')')?;
    let state = tail.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    head.split_once('(').map(|(_, comm)| comm.to_string())
}

/// Whether the process named in the owner file still runs (and is not some other program that
/// was given its pid since).
fn owner_alive(owner_file: &Path) -> bool {
    let Some(pid) = fs::read_to_string(owner_file).ok().and_then(|s| s.trim().parse::<u32>().ok()) else {
        return false;
    };
    let me = process_name(std::process::id());
    pid == std::process::id() || (process_name(pid).is_some() && process_name(pid) == me)
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let password = fs::read_to_string(path).with_context(|| {
        format!("could not read the private PostgreSQL's password from {}", path.display())
    })?;
    Ok(password.trim().to_string())
}

/// The server's account must be able to enter every folder above its data directory.
fn reachable_by(dir: &Path, account: &Account) -> anyhow::Result<()> {
    for ancestor in dir.ancestors() {
        let meta = fs::metadata(ancestor)?;
        let mode = meta.mode();
        let enters = if meta.uid() == account.uid {
            mode & 0o100 != 0
        } else if meta.gid() == account.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !enters {
            bail!(
                "the private PostgreSQL runs as the `{}` account, which cannot enter {}: choose a \
                 MOVIESTORE_DATA_DIR that every account may reach (for example under /var/lib or /srv)",
                account.name,
                ancestor.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_folder_without_the_programs_is_reported_with_what_to_do() {
        let empty = std::env::temp_dir().join(format!("no-pg-{}", uuid::Uuid::now_v7()));
        fs::create_dir_all(&empty).unwrap();
        let error = find_server_programs(Some(&empty)).unwrap_err();
        assert_eq!(error.searched, vec![empty.clone()]);
        let message = error.to_string();
        for needle in
            ["initdb", "apt-get install postgresql", "MOVIESTORE_PG_BIN", "DATABASE_URL", "docker compose up"]
        {
            assert!(message.contains(needle), "{needle} missing from: {message}");
        }
        fs::remove_dir_all(empty).unwrap();
    }

    #[test]
    fn process_names_come_from_proc_and_a_gone_pid_has_none() {
        assert!(process_name(std::process::id()).is_some());
        assert_eq!(process_name(u32::MAX), None);
    }

    #[test]
    fn an_owner_file_naming_a_gone_or_foreign_process_is_not_alive() {
        let dir = std::env::temp_dir().join(format!("owner-{}", uuid::Uuid::now_v7()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("postgres.owner");
        assert!(!owner_alive(&file), "no file");
        fs::write(&file, std::process::id().to_string()).unwrap();
        assert!(owner_alive(&file), "this process");
        fs::write(&file, u32::MAX.to_string()).unwrap();
        assert!(!owner_alive(&file), "a pid no process has");
        fs::write(&file, "1").unwrap();
        assert!(!owner_alive(&file), "a live process of another program");
        fs::remove_dir_all(dir).unwrap();
    }
}
