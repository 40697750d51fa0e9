//! Operating the binary as systemd or Kubernetes would: graceful SIGTERM
//! under load, the admin probes and `/metrics`, several workers, a config
//! file with several listeners and `tq-host check`, JSON logs, and
//! certificate reload on SIGHUP.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sigterm_drains_a_64_mib_download_refuses_newcomers_and_exits_0() {
    const SIZE: u64 = 64 << 20;
    let mut l = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "60s",
    ]);
    let admin_at = l.admin_addr();
    let addr = l.quic_addr();
    assert_eq!(admin(&admin_at, "GET", "/readyz").0, 200);

    // A 64 MiB download, read as it comes.
    let mut download = Command::new(BIN)
        .args([
            "get",
            "-k",
            "--timeout",
            "30s",
            &format!("https://{addr}/bytes/{SIZE}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start get");
    let mut out = download.stdout.take().expect("stdout");
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut all_x = true;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all_x &= buf[..n].iter().all(|b| *b == b'x');
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        all_x
    });
    while got.load(Ordering::Relaxed) < (1 << 20) {
        assert!(
            download.try_wait().expect("wait").is_none(),
            "get ended early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    l.signal("-TERM");
    let t0 = Instant::now();
    l.wait_for("saying it stops", |s| s.contains("stopping"));
    // Draining: not ready, and newcomers get no connection.
    let (status, _) = admin(&admin_at, "GET", "/readyz");
    assert_eq!(status, 503);
    let (code, _, err) = get_with(&["-k", "--timeout", "2s", &format!("https://{addr}/")]);
    assert_ne!(
        code,
        Some(0),
        "a new connection was served while draining: {err}"
    );

    // The download completes, byte-exact.
    let status = download.wait().expect("get ends");
    let all_x = reader.join().expect("reader");
    let mut err = String::new();
    if let Some(mut e) = download.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "download failed: {err}");
    assert_eq!(got.load(Ordering::Relaxed), SIZE);
    assert!(all_x, "the body is not all 'x'");

    // Then the process exits 0, well within its timeout.
    assert_eq!(l.wait_exit(Duration::from_secs(60)), Some(0));
    l.drain_for(Duration::from_millis(200));
    let stopped = l.seen.iter().find(|s| s.contains("stopped")).cloned();
    println!(
        "drain: SIGTERM to exit {:?}; server says: {}",
        t0.elapsed(),
        stopped.unwrap_or_default()
    );
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let mut l = Logged::start(&["--listen", "127.0.0.1:0", "--shutdown-timeout", "120s"]);
    let addr = l.quic_addr();
    // A download nobody reads: its connection stays busy.
    let mut stuck = Command::new(BIN)
        .args(["get", "-k", &format!("https://{addr}/bytes/17179869184")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start get");
    // Wait until the body flows, then stop reading it.
    let mut first = vec![0u8; 4096];
    stuck
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("the download starts");
    assert!(first.iter().all(|b| *b == b'x'));
    l.signal("-TERM");
    l.wait_for("saying it stops", |s| s.contains("stopping"));
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = l.server.0.try_wait().expect("wait") {
        l.drain_for(Duration::from_millis(200));
        let _ = stuck.kill();
        let mut err = String::new();
        let _ = stuck.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!(
            "exited ({status}) before the download ended:\n{}\nget: {err}",
            l.seen.join("\n")
        );
    }
    l.signal("-TERM");
    // 130: stopped by a second signal, without draining.
    assert_eq!(l.wait_exit(Duration::from_secs(20)), Some(130));
    l.wait_for("saying why", |s| s.contains("second stop signal"));
    let _ = stuck.kill();
    let _ = stuck.wait();
}

/// `/metrics`, parsed: every sample by name and sorted labels.
fn scrape(admin_addr: &str) -> HashMap<String, f64> {
    let (status, body) = admin(admin_addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text parses");
    assert!(!scrape.samples.is_empty());
    let mut out = HashMap::new();
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        *out.entry(format!("{}{{{}}}", s.metric, labels.join(",")))
            .or_insert(0.0) += value;
    }
    out
}

/// The sum of every sample of `metric` whose labels include all `with`.
fn sum(m: &HashMap<String, f64>, metric: &str, with: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(metric) && with.iter().all(|w| k.contains(w)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_move_by_exactly_what_a_scripted_sequence_did() {
    let dir = tempfile_dir("metrics");
    let file = dir.join("app.wasm");
    std::fs::copy(plugin_wasm("wasi_hello"), &file).unwrap();
    let mut l = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--plugin",
        file.to_str().unwrap(),
        "--no-watch",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]);
    let admin_at = l.admin_addr();
    let addr = l.quic_addr();
    assert_eq!(admin(&admin_at, "GET", "/healthz"), (200, "ok\n".into()));
    let before = scrape(&admin_at);

    let url = |p: &str| format!("https://{addr}{p}");
    for path in ["/", "/", "/nope", "/panic"] {
        let _ = get_with(&["-k", &url(path)]);
    }
    // A reload to another component, then a refused one.
    std::fs::copy(plugin_wasm("wasi_fanout"), &file).unwrap();
    assert_eq!(admin(&admin_at, "POST", "/reload").0, 200);
    std::fs::write(&file, b"junk").unwrap();
    assert_eq!(admin(&admin_at, "POST", "/reload").0, 422);

    // Requests are counted when the server forgets them: give the last
    // connection's teardown a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let m = scrape(&admin_at);
        let d = |k: &str, w: &[&str]| sum(&m, k, w) - sum(&before, k, w);
        if d("tq_requests_total", &[]) >= 4.0 && d("tq_connections_closed_total", &[]) >= 4.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "requests never counted: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let d = |k: &str, w: &[&str]| sum(&after, k, w) - sum(&before, k, w);
    let wasi = "world=wasi-http";
    assert_eq!(
        d("tq_requests_total", &[wasi, "method=GET", "status=2xx"]),
        2.0
    );
    assert_eq!(
        d("tq_requests_total", &[wasi, "method=GET", "status=4xx"]),
        1.0
    );
    assert_eq!(
        d("tq_requests_total", &[wasi, "method=GET", "status=5xx"]),
        1.0
    );
    assert_eq!(d("tq_requests_total", &[]), 4.0);
    assert_eq!(d("tq_plugin_calls_total", &["outcome=trap"]), 1.0);
    // Each wasi:http request is one call, with a fresh instance made
    // inside it (and counted on its own as well).
    assert_eq!(d("tq_plugin_calls_total", &["call=request"]), 4.0);
    assert_eq!(
        d("tq_plugin_calls_total", &["call=request", "outcome=trap"]),
        1.0
    );
    assert_eq!(
        d("tq_plugin_call_duration_seconds_count", &["call=request"]),
        4.0
    );
    assert!(d("tq_plugin_calls_total", &["call=instantiate"]) >= 4.0);
    assert_eq!(d("tq_plugin_calls_total", &["call=hook"]), 0.0);
    assert_eq!(d("tq_reloads_total", &["result=reloaded"]), 1.0);
    assert_eq!(d("tq_reloads_total", &["result=refused"]), 1.0);
    assert_eq!(d("tq_reload_duration_seconds_count", &[]), 2.0);
    assert_eq!(d("tq_connections_accepted_total", &[]), 4.0);
    assert_eq!(d("tq_handshakes_completed_total", &[]), 4.0);
    assert_eq!(d("tq_request_duration_seconds_count", &[wasi]), 4.0);
    assert!(d("tq_plugin_calls_total", &["outcome=ok"]) >= 3.0);
    assert!(d("tq_packets_total", &["direction=in"]) > 0.0);
    assert!(d("tq_bytes_total", &["direction=out"]) > 0.0);
    assert_eq!(sum(&after, "tq_connections_active", &[]), 0.0);
    assert!(sum(&after, "tq_plugin_versions_loaded", &[]) >= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_share_the_connections() {
    let mut l = Logged::start(&["--listen", "127.0.0.1:0", "--workers", "2"]);
    let addr = l.quic_addr();
    for _ in 0..24 {
        let (code, _, err) = get_with(&["-k", &format!("https://{addr}/")]);
        assert_eq!(code, Some(0), "{err}");
    }
    let mut sockets = HashSet::new();
    for _ in 0..24 {
        let line = l.wait_for("accepting a connection", |s| {
            s.contains("connection accepted")
        });
        sockets.insert(Logged::field(&line, "socket").expect("socket"));
    }
    assert_eq!(
        sockets.len(),
        2,
        "24 connections on one worker: {sockets:?}"
    );
}

#[test]
fn server_ids_are_in_every_connection_id_and_bad_ones_are_refused() {
    let mut l = Logged::start(&["--listen", "127.0.0.1:0", "--server-id", "0a01"]);
    let addr = l.quic_addr();
    for _ in 0..5 {
        let (code, _, err) = get_with(&["-k", &format!("https://{addr}/")]);
        assert_eq!(code, Some(0), "{err}");
        let line = l.wait_for("accepting a connection", |s| {
            s.contains("connection accepted")
        });
        let id = Logged::field(&line, "id").expect("id");
        // QUIC-LB plaintext: length self-description, then the server id.
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(&id[0..2], "0f", "first octet of {id}");
        assert_eq!(&id[2..6], "0a01", "server id in {id}");
    }
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--server-id", "xyz"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server-id"));
}

#[test]
fn a_session_ticket_key_file_is_read_and_a_bad_one_refused() {
    let dir = std::env::temp_dir().join(format!("tq-ticket-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("ticket-key");
    std::fs::write(&good, format!("{}\n", "5a".repeat(32))).unwrap();
    let mut l = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--session-ticket-key-file",
        good.to_str().unwrap(),
    ]);
    let addr = l.quic_addr();
    let (code, _, err) = get_with(&["-k", &format!("https://{addr}/")]);
    assert_eq!(code, Some(0), "{err}");
    // A key too short, or no file: refused before anything binds, naming
    // the flag and the file.
    let short = dir.join("short");
    std::fs::write(&short, "5a5a").unwrap();
    let missing = dir.join("missing");
    for (f, says) in [(&short, "at least 32 bytes"), (&missing, "cannot read")] {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--session-ticket-key-file"])
            .arg(f)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("--session-ticket-key-file")
                && stderr.contains(&*f.to_string_lossy())
                && stderr.contains(says),
            "{stderr}"
        );
    }
    // The reset key's file as the ticket key: refused.
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--session-ticket-key-file"])
        .arg(&good)
        .arg("--stateless-reset-key-file")
        .arg(&good)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("hold the same key"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_logs_parse_with_the_connection_span() {
    let mut l = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--plugin",
        plugin_wasm("hello").to_str().unwrap(),
        "--workers",
        "1",
    ]);
    let line = l.wait_for("saying where it listens", |s| s.contains("listening"));
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let addr = v["fields"]["addr"].as_str().expect("addr").to_owned();
    let (code, _, err) = get_with(&["-k", &format!("https://{addr}/")]);
    assert_eq!(code, Some(0), "{err}");
    let access = l.wait_for("of the access log", |s| s.contains("tq_host::access"));
    l.drain_for(Duration::from_millis(300));
    for line in &l.seen {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let v: serde_json::Value = serde_json::from_str(&access).unwrap();
    let span = &v["span"];
    assert_eq!(span["name"], "conn");
    assert!(span["id"].as_str().is_some_and(|s| s.len() == 32), "{v}");
    assert!(
        span["peer"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{v}"
    );
    assert!(
        span["app"]
            .as_str()
            .is_some_and(|s| s.starts_with("plugin@")),
        "{v}"
    );
    let f = &v["fields"];
    assert_eq!(
        (f["method"].as_str(), f["path"].as_str()),
        (Some("GET"), Some("/"))
    );
    assert_eq!(f["status"], 200);
    assert!(f["version"].as_str().is_some_and(|s| s.len() == 12), "{v}");
    assert!(f["duration_ms"].as_f64().is_some(), "{v}");
}

#[test]
fn one_config_serves_two_plugins_and_check_names_every_error() {
    let dir = tempfile_dir("config");
    std::fs::copy(plugin_wasm("hello"), dir.join("hello.wasm")).unwrap();
    std::fs::copy(plugin_wasm("wasi_hello"), dir.join("wasi.wasm")).unwrap();
    let good = dir.join("tq.toml");
    std::fs::write(
        &good,
        "[quic]\nmax_idle_timeout = \"10s\"\n\n\
         [[listener]]\nname = \"h3\"\nlisten = [\"127.0.0.1:0\"]\nplugin = \"hello.wasm\"\n\n\
         [[listener]]\nname = \"wasi\"\nlisten = [\"127.0.0.1:0\"]\nplugin = \"wasi.wasm\"\n\
         [listener.limits]\nmemory_mib = 32\n",
    )
    .unwrap();
    let text = run(
        Command::new(BIN).args(["check", good.to_str().unwrap()]),
        "tq-host check",
    );
    assert!(
        text.contains("h3:") && text.contains("wasi:") && text.contains(": ok"),
        "{text}"
    );

    // Served: two listeners, two plugins, one process.
    let mut l = Logged::start(&["--config", good.to_str().unwrap(), "--workers", "1"]);
    let mut addrs = HashMap::new();
    for _ in 0..2 {
        let line = l.wait_for("saying where it listens", |s| s.contains("listening"));
        addrs.insert(
            Logged::field(&line, "listener").unwrap(),
            Logged::field(&line, "addr").unwrap(),
        );
    }
    let body = |name: &str| {
        let (code, out, err) = get_with(&["-k", &format!("https://{}/", addrs[name])]);
        assert_eq!(code, Some(0), "{err}");
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(body("h3").contains("hello from a tq-host plugin"));
    assert!(body("wasi").contains("wasi:http component"));

    // A bad file: each error with its file, line and key.
    let cases = [
        ("syntax.toml", "[[listener]\nlisten = 1\n", vec!["syntax.toml:1"]),
        (
            "unknown.toml",
            "[[listener]]\nlisten = [\"127.0.0.1:0\"]\nplugn = \"hello.wasm\"\n",
            vec!["unknown.toml:3", "plugn"],
        ),
        (
            "files.toml",
            "[[listener]]\nlisten = [\"127.0.0.1:0\"]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n\n\
             [[listener]]\nlisten = [\"127.0.0.1:0\"]\nplugin = \"tq.toml\"\n",
            vec![
                "files.toml:3: listener[0].cert",
                "missing.pem",
                "files.toml:8: listener[1].plugin",
                "not a WebAssembly file",
            ],
        ),
        (
            "instances.toml",
            "[[listener]]\nlisten = [\"127.0.0.1:0\"]\nplugin = \"hello.wasm\"\n\
             [listener.limits]\ninstances = 0\n",
            vec!["instances.toml:3", "`instances` must be at least 1"],
        ),
        (
            // A name picks the ticket keys: two alike would share them.
            "names.toml",
            "[[listener]]\nname = \"site\"\nlisten = [\"127.0.0.1:0\"]\n\n\
             [[listener]]\nname = \"site\"\nlisten = [\"127.0.0.1:0\"]\n",
            vec!["site: another listener has this name"],
        ),
    ];
    for (name, text, wanted) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["check", path.to_str().unwrap()])
            .output()
            .expect("check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        for w in wanted {
            assert!(err.contains(w), "{name}: no `{w}` in: {err}");
        }
    }
    // Listener flags cannot pick one of several listeners.
    let out = Command::new(BIN)
        .args(["--config", good.to_str().unwrap(), "--plugin", "x.wasm"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plugin cannot be used"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_the_certificate() {
    let dir = tempfile_dir("cert");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let write = |names: &[&str], ca: &str| {
        let c = tq_host::tls::SelfSignedCertificate::generate(names).unwrap();
        let tmp = dir.join("tmp");
        let _ = std::fs::create_dir_all(&tmp);
        let p = c.write_to(&tmp).unwrap();
        std::fs::copy(&p.cert, dir.join(ca)).unwrap();
        // Replace key and certificate as one would: new files moved in.
        std::fs::rename(&p.key, &key).unwrap();
        std::fs::rename(&p.cert, &cert).unwrap();
    };
    write(&["localhost", "127.0.0.1", "::1"], "first.pem");
    let mut l = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let addr = l.quic_addr();
    // Our client verifying against one certificate as its CA, for the
    // name "localhost": (exit code, stdout, stderr) as `get` would give.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let fetch = |ca: &str| -> (Option<i32>, Vec<u8>, String) {
        let settings = tq_host::quic::QuicSettings {
            max_idle_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let params = tq_host::quic::ConnectionParams::new_client(settings).ca_file(dir.join(ca));
        rt.block_on(async {
            match tq_host::http3::H3Client::connect(
                addr,
                "localhost",
                &params,
                tq_host::http3::Http3Settings::default(),
            )
            .await
            {
                Ok(_) => (Some(0), Vec::new(), String::new()),
                Err(e) => (Some(1), Vec::new(), format!("{e:#}")),
            }
        })
    };
    let (code, _, err) = fetch("first.pem");
    assert_eq!(code, Some(0), "{err}");
    write(&["localhost", "127.0.0.1", "::1"], "second.pem");
    assert_ne!(
        fetch("second.pem").0,
        Some(0),
        "the new certificate served before SIGHUP"
    );
    l.signal("-HUP");
    l.wait_for("saying the certificate reloaded", |s| {
        s.contains("certificate reloaded")
    });
    let (code, _, err) = fetch("second.pem");
    assert_eq!(code, Some(0), "after SIGHUP: {err}\n{}", l.seen.join("\n"));
    assert_ne!(fetch("first.pem").0, Some(0));

    // A broken key is refused; the running certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    l.signal("-HUP");
    l.wait_for("refusing the broken key", |s| {
        s.contains("certificate reload refused")
    });
    assert_eq!(fetch("second.pem").0, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
