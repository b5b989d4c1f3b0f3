//! A PostgreSQL cluster of the test's own, for tests that stop the server or need TLS: made
//! with the machine's server binaries in a temporary folder, on 127.0.0.1 and a free port.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql: run scripts/test, which installs them")
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no PostgreSQL server binaries: run scripts/test")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// A PostgreSQL program, run as the `postgres` user when we are root (the server refuses root).
fn command(program: &Path, args: &[&str]) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.args(args);
    command
}

fn run(program: &Path, args: &[&str]) -> std::process::Output {
    let output = command(program, args)
        .output()
        .expect("run a PostgreSQL program");
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl PrivatePostgres {
    /// Creates and starts a cluster; `ssl` is (server certificate PEM, key PEM) to enable TLS.
    pub fn start(ssl: Option<(Vec<u8>, Vec<u8>)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pipe-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let data = dir.path().join("data");
        if is_root() {
            Command::new("chown")
                .args(["postgres:", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
        }
        let bin = pg_bin();
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        let port = super::http::closed_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n",
            dir.path().display()
        );
        if let Some((cert, key)) = ssl {
            let cert_path = data.join("server.crt");
            let key_path = data.join("server.key");
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            if is_root() {
                Command::new("chown")
                    .args([
                        "postgres:",
                        cert_path.to_str().unwrap(),
                        key_path.to_str().unwrap(),
                    ])
                    .status()
                    .unwrap();
            }
            Command::new("chmod")
                .args(["600", key_path.to_str().unwrap()])
                .status()
                .unwrap();
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).unwrap();
        let cluster = Self { dir, bin, port };
        cluster.resume();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_owned()
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        run(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts the server again.
    pub fn resume(&self) {
        let log = self.dir.path().join("server.log");
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// A URL for database `postgres` on this server, with `params` appended.
    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres{params}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = command(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
        .output();
    }
}
