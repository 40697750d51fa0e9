//! Helpers the binary's tests share: start `tq-host` on an ephemeral
//! port, talk to its admin endpoint, fetch with `tq-host get`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tq-host");

/// A running server; killed on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tq-host` on an ephemeral port and returns it with its address,
/// read from its "listening" log line.
pub fn serve(extra: &[&str]) -> (Server, String) {
    let (server, addr, _) = serve_logging(extra);
    (server, addr)
}

/// As [`serve`], also returning the log lines up to the listening one.
pub fn serve_logging(extra: &[&str]) -> (Server, String, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
    spawn_listening(cmd)
}

/// Starts `cmd` (tq-host serving, or a script that runs it) and waits for
/// its `listening` line: the server, its address and the log lines up to
/// there.
pub fn spawn_listening(mut cmd: Command) -> (Server, String, Vec<String>) {
    let mut seen = Vec::new();
    let mut child = cmd
        .env("TQ_LOG", "info")
        .env("TQ_CACHE_DIR", test_cache())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start tq-host");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(Instant::now() < deadline, "no listening line");
        let line = lines.next().expect("server exited").expect("read stderr");
        seen.push(line.clone());
        if let Some(i) = line.find("addr=") {
            let rest = &line[i + 5..];
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Server(child), addr, seen)
}

/// One HTTP/1.1 request to the admin endpoint: (status, body).
pub fn admin(addr: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read admin answer");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn get(addr: &str) -> String {
    let out = Command::new(BIN)
        .args(["get", "-k", &format!("https://{addr}/")])
        .output()
        .expect("run get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn plugin_wasm(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/wasm/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        p.exists(),
        "build the plugins first: bash scripts/build-plugins.sh"
    );
    p
}

/// The compilation cache the tests' servers share (not the user's own).
pub fn test_cache() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-cache")
}

pub fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tq-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `tq-host` whose stderr lines arrive on a channel.
pub struct Logged {
    pub server: Server,
    pub lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Logged {
    /// Starts `tq-host ARGS` (nothing added) with `TQ_LOG=info`.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("TQ_LOG", "info")
            .env("TQ_CACHE_DIR", test_cache())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start tq-host");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self {
            server: Server(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `f`; returns it. Panics after 60 s
    /// or when the server exits first.
    pub fn wait_for(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no line {what}; seen:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The first line seen so far, or still to come, that satisfies `f`.
    pub fn find(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        match self.seen.iter().find(|l| f(l)) {
            Some(l) => l.clone(),
            None => self.wait_for(what, f),
        }
    }

    /// Every line that arrives within `d`.
    pub fn drain_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l);
        }
    }

    /// The admin endpoint's address, from its log line.
    pub fn admin_addr(&mut self) -> String {
        let line = self.find("naming the admin endpoint", |s| s.contains("admin="));
        Self::field(&line, "admin").expect("admin address logged")
    }

    /// The first QUIC address, from a "listening" line.
    pub fn quic_addr(&mut self) -> String {
        let line = self.find("saying where it listens", |s| {
            s.contains("listening") && s.contains("addr=")
        });
        Self::field(&line, "addr").expect("address logged")
    }

    /// The value after `key=` in a human log line.
    pub fn field(line: &str, key: &str) -> Option<String> {
        line.split(&format!("{key}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(|v| v.trim_matches('"').to_owned())
    }

    /// Sends `signal` (e.g. "-TERM") to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.server.0.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill")
            .success());
    }

    /// Waits for the server to exit (at most `limit`); its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.server.0.try_wait().expect("wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `tq-host get ARGS`: (exit code, stdout, stderr).
pub fn get_with(args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let out = Command::new(BIN)
        .arg("get")
        .args(args)
        .output()
        .expect("run get");
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The repository's root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo`, as the one running the tests.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd`, which must succeed (`what` names it in the failure, with
/// its output); its stdout.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
