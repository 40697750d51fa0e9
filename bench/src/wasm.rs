//! The `wasm` scenario: what the plugin machinery itself costs, read from
//! tq-host's own metrics (`--admin`, `GET /metrics`) while it serves the
//! `small` load, and how long a reload takes under load.
//!
//! - **hook call**: the mean wall-clock time of one call into an
//!   http3-app plugin (`on-event`, `wait-for-data`, ...), guest work
//!   included, and how many calls a request takes;
//! - **instantiation**: the mean time to create an instance, per
//!   connection for the http3-app world (measured over new connections
//!   with one GET each), per request for a fresh wasi:http instance;
//! - **wasi:http request**: the mean time of one whole request in the
//!   guest (instantiation where it happens, handler, body);
//! - **reload**: `POST /reload` with a plugin whose bytes changed (a
//!   custom section with a new nonce, so the compile cache misses and the
//!   reload compiles), three times while the small load runs: the
//!   admin call's latency, the compile time it reports, and whether any
//!   request of the load failed.
//!
//! Only tq-host servers with a plugin run it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{free_port, load, pinned, small_load, start_with, Metrics, ServerSpec, Setup};

/// Requests per load phase: long enough for a steady mean, short enough
/// for three servers a round.
const REQUESTS: u64 = 200_000;
/// New connections (one GET each) over which per-connection
/// instantiation is measured.
const CONNECTIONS: u64 = 500;
/// Reloads per run.
const RELOADS: usize = 3;

/// Whether a server runs the scenario: tq-host with a plugin.
pub(crate) fn applies(spec: &ServerSpec) -> bool {
    spec.tq_flags
        .as_ref()
        .is_some_and(|f| f.iter().any(|a| a == "--plugin"))
}

pub(crate) fn run(
    setup: &Setup,
    spec: &ServerSpec,
    log: &Path,
    round: usize,
) -> anyhow::Result<Metrics> {
    // The server serves a copy of its plugin, which the reloads rewrite.
    let mut spec = spec.clone();
    let flags = spec.tq_flags.as_mut().context("not a tq-host server")?;
    let at = flags
        .iter()
        .position(|a| a == "--plugin")
        .context("no --plugin")?
        + 1;
    let original = std::fs::read(&flags[at]).with_context(|| format!("reading {}", flags[at]))?;
    let copy = setup
        .work
        .join(format!("reload-{}-{round}.wasm", spec.name));
    std::fs::write(&copy, &original)?;
    flags[at] = copy.display().to_string();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let server = start_with(setup, &spec, log, &["--admin".into(), admin.to_string()])?;

    let mut m = Metrics::new();
    // Calls per request and their mean, over the small load alone.
    let before = scrape(admin)?;
    let requests = REQUESTS.to_string();
    let r = load(setup, server.addr, &small_load(&requests))?;
    let after = scrape(admin)?;
    let done = r.done as f64;
    let hooks = calls(&before, &after, "hook");
    if let Some(us) = hooks.mean_us() {
        m.insert("hook_us".into(), us);
        m.insert("hooks_per_request".into(), hooks.count / done);
    }
    let requests_in_guest = calls(&before, &after, "request");
    if let Some(us) = requests_in_guest.mean_us() {
        m.insert("request_us".into(), us);
    }
    if requests_in_guest.count > 0.0 {
        // wasi:http: instances per request (fresh) or per many (reused).
        let made = calls(&before, &after, "instantiate");
        if let Some(us) = made.mean_us() {
            m.insert("instantiate_us".into(), us);
            m.insert("requests_per_instance".into(), done / made.count);
        }
    } else {
        // An instance per connection: measured over new connections.
        let before = scrape(admin)?;
        let count = CONNECTIONS.to_string();
        load(
            setup,
            server.addr,
            &["handshakes", "--count", &count, "--parallel", "1"],
        )?;
        let after = scrape(admin)?;
        if let Some(us) = calls(&before, &after, "instantiate").mean_us() {
            m.insert("instantiate_us".into(), us);
        }
    }
    let mut failed = r.failed as f64;

    // Reloads, each with new bytes, while the load runs.
    let mut loader = pinned(setup, Some(1), &setup.bin_dir.join("bench-load"));
    let requests = (REQUESTS * 5).to_string();
    let child = loader
        .arg("--addr")
        .arg(server.addr.to_string())
        .arg("--ca")
        .arg(&setup.cert)
        .args(small_load(&requests))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running bench-load small")?;
    // Killed if a reload fails midway: an orphaned load generator would
    // skew every run after this one.
    let mut child = KillOnDrop(child);
    let mut latencies = Vec::new();
    let mut compiles = Vec::new();
    let mut under_load = 0;
    for i in 0..RELOADS {
        std::thread::sleep(Duration::from_millis(500));
        // Never seen before, by this server or an earlier one sharing the
        // compile cache.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(i as u64, |d| d.as_nanos() as u64);
        let tmp = copy.with_extension("tmp");
        std::fs::write(&tmp, with_nonce(&original, nonce))?;
        std::fs::rename(&tmp, &copy)?;
        let t = Instant::now();
        let (status, body) = http(admin, "POST", "/reload")?;
        let took = t.elapsed();
        let reply: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("POST /reload answered {status}: {body}"))?;
        if status != 200 || reply["result"] != "reloaded" {
            bail!("POST /reload answered {status}: {body}");
        }
        latencies.push(took.as_secs_f64() * 1e3);
        if let Some(c) = reply["compile_ms"].as_f64() {
            compiles.push(c);
        }
        if child.0.try_wait()?.is_none() {
            under_load += 1;
        }
    }
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .context("bench-load's output")?
        .read_to_string(&mut out)?;
    let status = child.0.wait()?;
    if !status.success() {
        bail!("bench-load small (during reloads) failed ({status})");
    }
    let line = out.lines().last().context("bench-load printed nothing")?;
    let r: tq_bench::LoadReport =
        serde_json::from_str(line).with_context(|| format!("bench-load printed {line:?}"))?;
    failed += r.failed as f64;
    m.insert("reload_ms".into(), median(&mut latencies));
    if !compiles.is_empty() {
        m.insert("reload_compile_ms".into(), median(&mut compiles));
    }
    m.insert("reloads_under_load".into(), under_load as f64);
    m.insert("failed".into(), failed);
    drop(server);
    let _ = std::fs::remove_file(&copy);
    Ok(m)
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The component with a custom section appended that holds `nonce`: the
/// same code under a new hash, so a reload compiles it afresh.
fn with_nonce(component: &[u8], nonce: u64) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"tq-bench-nonce";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(&nonce.to_le_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// `GET /metrics` from the admin endpoint.
fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = http(admin, "GET", "/metrics")?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    Ok(body)
}

/// Calls of one kind between two scrapes: how many, and their total
/// wall-clock time.
struct Calls {
    count: f64,
    secs: f64,
}

impl Calls {
    fn mean_us(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.secs / self.count * 1e6)
    }
}

/// The calls of kind `call` made between scrapes `before` and `after`.
fn calls(before: &str, after: &str, call: &str) -> Calls {
    let delta = |part: &str| {
        let name = format!("tq_plugin_call_duration_seconds_{part}");
        sum(after, &name, call) - sum(before, &name, call)
    };
    Calls {
        count: delta("count"),
        secs: delta("sum"),
    }
}

/// The sum over every series of `name` whose labels include
/// `call="CALL"`, in Prometheus text.
fn sum(text: &str, name: &str, call: &str) -> f64 {
    let label = format!("call=\"{call}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One HTTP/1.1 request to the admin endpoint: status and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the admin endpoint {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .context("an HTTP reply without a blank line")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("an HTTP reply that begins {head:?}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_named_call() {
        let text = "tq_plugin_call_duration_seconds_sum{version=\"a\",call=\"hook\"} 1.5\n\
                    tq_plugin_call_duration_seconds_sum{version=\"b\",call=\"hook\"} 0.5\n\
                    tq_plugin_call_duration_seconds_sum{version=\"a\",call=\"instantiate\"} 9\n\
                    tq_plugin_call_duration_seconds_count{version=\"a\",call=\"hook\"} 4\n";
        assert_eq!(
            sum(text, "tq_plugin_call_duration_seconds_sum", "hook"),
            2.0
        );
        assert_eq!(
            sum(text, "tq_plugin_call_duration_seconds_count", "hook"),
            4.0
        );
        assert_eq!(
            sum(text, "tq_plugin_call_duration_seconds_sum", "init"),
            0.0
        );
    }

    #[test]
    fn the_nonce_is_a_well_formed_custom_section() {
        let out = with_nonce(b"\0asm\x0d\0\x01\0", 7);
        // id 0, size 23: name length 14, the name, 8 bytes of nonce.
        assert_eq!(&out[8..11], &[0, 23, 14]);
        assert_eq!(&out[11..25], b"tq-bench-nonce");
        assert_eq!(&out[25..], &7u64.to_le_bytes());
    }
}
