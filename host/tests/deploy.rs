//! The files in `deploy/` stay true to the binary: every flag they pass
//! exists in `tq-host --help`, every config they ship passes `tq-host
//! check`, the drain arithmetic of the unit and the Deployment holds, and
//! every metric the dashboard queries is one the server exports. And
//! `interop/run_endpoint.sh`, the QUIC Interop Runner's entry point, maps
//! each case as the runner expects and serves it to an independent client
//! (aioquic).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `tq-host --help` and `tq-host check --help`.
fn help() -> String {
    let mut all = String::new();
    for args in [&["--help"][..], &["check", "--help"]] {
        let out = Command::new(BIN).args(args).output().expect("help");
        assert!(out.status.success());
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

/// Checks that each `--flag` in `args` is one `tq-host` documents.
fn assert_flags_exist(what: &str, args: &[String], help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for a in args {
        if let Some(f) = a.strip_prefix("--") {
            let name = f.split('=').next().unwrap_or(f);
            let flag = format!("--{name}");
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{what} passes {flag}, which `tq-host --help` does not know"
            );
            flags.insert(flag);
        }
    }
    flags
}

/// The value after `flag` in `args`.
fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn seconds(d: &str) -> u64 {
    humantime_serde::re::humantime::parse_duration(d)
        .unwrap_or_else(|e| panic!("{d}: {e}"))
        .as_secs()
}

/// Runs `tq-host check` on a config shipped in `deploy/`, its absolute
/// paths pointed at real test files (a fresh certificate, the example
/// plugin).
fn assert_config_checks(what: &str, toml_text: &str) {
    let dir = tempfile_dir(&format!("deploy-{}", what.replace('/', "-")));
    let cert = tq_host::tls::SelfSignedCertificate::generate(&["localhost"]).unwrap();
    let paths = cert.write_to(&dir).unwrap();
    std::fs::copy(plugin_wasm("hello"), dir.join("app.wasm")).unwrap();
    let mut text = String::new();
    for line in toml_text.lines() {
        let mut l = line.to_owned();
        if let Some((key, value)) = line.split_once('=') {
            let v = value.trim().trim_matches('"');
            if v.starts_with('/') {
                let to = match key.trim() {
                    "cert" => paths.cert.clone(),
                    "key" => paths.key.clone(),
                    "plugin" => dir.join("app.wasm"),
                    k => panic!("{what}: unexpected path key {k}"),
                };
                l = format!("{} = \"{}\"", key.trim(), to.display());
            }
        }
        text.push_str(&l);
        text.push('\n');
    }
    let file = dir.join("tq.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", file.to_str().unwrap()])
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{what} fails `tq-host check`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_systemd_unit_uses_real_flags_and_drains_within_its_stop_timeout() {
    let help = help();
    let unit = read("systemd/tq-host.service");
    let mut shutdown = None;
    let mut stop_timeout = None;
    let mut checks = false;
    for line in unit.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let words: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
        match key {
            "ExecStart" | "ExecStartPre" | "ExecReload"
                if words.first().is_some_and(|w| w.ends_with("/tq-host")) =>
            {
                let rest = &words[1..];
                if rest.first().map(String::as_str) == Some("check") {
                    checks = true;
                    assert!(rest.get(1).is_some_and(|p| p.ends_with(".toml")));
                }
                assert_flags_exist(&format!("{key}="), rest, &help);
                if key == "ExecStart" {
                    shutdown = arg_after(rest, "--shutdown-timeout").map(seconds);
                }
            }
            "TimeoutStopSec" => stop_timeout = Some(seconds(value.trim())),
            "KillSignal" => assert_eq!(value.trim(), "SIGTERM"),
            "ExecReload" => assert!(value.contains("kill -HUP $MAINPID"), "{line}"),
            "MemoryDenyWriteExecute" => {
                assert_ne!(value.trim(), "yes", "wasmtime compiles code at run time")
            }
            _ => {}
        }
    }
    assert!(checks, "the unit never runs `tq-host check`");
    for needed in ["DynamicUser=yes", "ProtectSystem=strict"] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let (shutdown, stop) = (
        shutdown.unwrap_or(30),
        stop_timeout.expect("TimeoutStopSec"),
    );
    assert!(
        stop > shutdown,
        "TimeoutStopSec {stop}s <= --shutdown-timeout {shutdown}s"
    );
    assert_config_checks("systemd/tq.toml", &read("systemd/tq.toml"));
}

#[test]
fn the_container_image_runs_real_flags() {
    let help = help();
    let dockerfile = read("Dockerfile");
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD is a JSON array");
    let flags = assert_flags_exist("the Dockerfile's CMD", &args, &help);
    assert!(flags.contains("--admin"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/tq-host\"]"));
    assert!(dockerfile.contains("EXPOSE 4433/udp"));
}

#[test]
fn the_kubernetes_manifests_use_real_flags_probes_and_drain_arithmetic() {
    let help = help();
    let mut containers = Vec::new();
    let mut config = None;
    let mut udp_service = false;
    for file in [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "secret.example.yaml",
    ] {
        let text = read(&format!("k8s/{file}"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("k8s/{file} is not YAML: {e}"));
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Deployment" => containers.push(v.clone()),
                "ConfigMap" => {
                    if let Some(t) = v["data"]["tq.toml"].as_str() {
                        config = Some(t.to_owned());
                    }
                }
                "Service" => {
                    udp_service |= v["spec"]["ports"]
                        .as_sequence()
                        .is_some_and(|ps| ps.iter().any(|p| p["protocol"] == "UDP"));
                }
                _ => {}
            }
        }
    }
    assert!(udp_service, "no Service exposes a UDP port");
    assert_config_checks(
        "k8s/configmap.yaml",
        &config.expect("a tq.toml in a ConfigMap"),
    );
    assert_eq!(containers.len(), 1, "one Deployment");
    let spec = &containers[0]["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args: Vec<String> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();
    assert_flags_exist("the Deployment", &args, &help);
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz"),
        "readiness must follow /readyz"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    // The admin endpoint the probes reach is the one the args bind.
    let admin = arg_after(&args, "--admin").expect("--admin");
    let port: u64 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let probe_port = &c["readinessProbe"]["httpGet"]["port"];
    let named = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *probe_port)
        .map(|p| p["containerPort"].as_u64().unwrap());
    assert_eq!(probe_port.as_u64().or(named), Some(port));
    // preStop + shutdown timeout fit in the grace period.
    let shutdown = arg_after(&args, "--shutdown-timeout").map_or(30, seconds);
    let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .and_then(|cmd| cmd.last())
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(
        grace > pre_stop + shutdown,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + shutdown {shutdown}"
    );
    // The plugin comes from a mounted volume, not a subPath (which would
    // never see an update).
    let mounts = c["volumeMounts"].as_sequence().expect("volumeMounts");
    assert!(
        mounts.iter().all(|m| m["subPath"].is_null()),
        "subPath mounts do not update"
    );
}

use serde::Deserialize as _;

#[test]
fn the_dashboard_queries_only_metrics_the_server_exports() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("grafana/tq-host.json")).expect("dashboard JSON");
    // Every family the exporter registers, by its sample names (a family
    // shows once it has a series: give each one).
    use std::time::Duration;
    use tq_host::metrics::*;
    let m = PrometheusMetrics::new();
    m.connection_closed(CloseCause::PeerClosed);
    m.handshake_failed(HandshakeFailure::Tls);
    m.packets_in(1, 1);
    m.packets_out(1, 1);
    m.packet_dropped(PacketDropReason::Malformed);
    m.request_finished(&RequestRecord {
        world: "native",
        version: None,
        method: "GET",
        path: "/",
        status: Some(200),
        bytes_in: 0,
        bytes_out: 0,
        duration: Duration::ZERO,
        completed: true,
    });
    m.version_loaded("v");
    m.plugin_call("v", CallKind::Hook, Duration::ZERO, CallOutcome::Ok);
    m.plugin_instances("v", 1);
    m.reload(ReloadOutcome::Reloaded, Duration::ZERO);
    m.set_plugin_versions([("v".to_owned(), 1)]);
    let text = m.render();
    let mut known = BTreeSet::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            match kind {
                "counter" => {
                    known.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        known.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    known.insert(name.to_owned());
                }
            }
        }
    }
    assert!(known.contains("tq_requests_total"), "{known:?}");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());
    let mut used = BTreeSet::new();
    for e in &exprs {
        let b = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("tq_") {
            let start = i + at;
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            used.insert(e[start..end].to_owned());
            i = end;
        }
    }
    for m in &used {
        assert!(
            known.contains(m),
            "the dashboard queries {m}, which is not exported"
        );
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// `interop/run_endpoint.sh` with `env`: its exit code and output.
fn endpoint(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("interop/run_endpoint.sh"))
        .env("INTEROP_DRY_RUN", "1")
        .env("TQ_HOST", BIN)
        .env_remove("SSLKEYLOGFILE")
        .env_remove("QLOGDIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run run_endpoint.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_interop_endpoint_maps_the_runner_s_cases_onto_real_flags() {
    let help = help();
    for (case, want, not) in [
        (
            "handshake",
            &["--app hq", "--no-retry", "--www /www"][..],
            &["--config"][..],
        ),
        ("transfer", &["--app hq", "--no-retry"], &[]),
        ("multiconnect", &["--app hq", "--no-retry"], &[]),
        ("chacha20", &["--app hq"], &[]),
        ("keyupdate", &["--app hq"], &[]),
        ("resumption", &["--app hq", "--no-retry"], &[]),
        ("retry", &["--app hq"], &["--no-retry"]),
        (
            "zerortt",
            &["--app hq", "--config", "enable_early_data = true"],
            &[],
        ),
        ("http3", &["--app page", "--www /www"], &[]),
    ] {
        let (code, out) = endpoint(&[("ROLE", "server"), ("TESTCASE", case)]);
        assert_eq!(code, 0, "{case}: {out}");
        for w in want {
            assert!(out.contains(w), "{case}: no {w:?} in {out}");
        }
        for n in not {
            assert!(!out.contains(n), "{case}: {n:?} in {out}");
        }
        let args: Vec<String> = out
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect();
        assert_flags_exist(case, &args, &help);
        if case == "zerortt" {
            let toml_text: String = out.lines().skip(1).collect::<Vec<_>>().join("\n");
            assert_config_checks("the zerortt config", &toml_text);
        }
    }
    // The client's cases, onto `tq-host get` flags that exist.
    let get_help = {
        let out = Command::new(BIN)
            .args(["get", "--help"])
            .output()
            .expect("get --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (case, want) in [
        ("http3", &[][..]),
        ("handshake", &["--hq"][..]),
        ("transfer", &["--hq"]),
        ("multiconnect", &["--hq", "--connection-per-url"]),
        ("resumption", &["--hq", "--connection-per-url"]),
        (
            "zerortt",
            &["--hq", "--reconnect-after-first", "--early-data"],
        ),
    ] {
        let (code, out) = endpoint(&[
            ("ROLE", "client"),
            ("TESTCASE", case),
            ("REQUESTS", "https://server:443/a https://server:443/b"),
        ]);
        assert_eq!(code, 0, "{case}: {out}");
        assert!(
            out.contains("get -k -s")
                && out.contains("--output-dir /downloads")
                && out.ends_with("/b\n"),
            "{out}"
        );
        for w in want {
            assert!(out.contains(w), "{case}: no {w} in {out}");
        }
        if case == "http3" {
            assert!(!out.contains("--hq"), "{out}");
        }
        let args: Vec<String> = out
            .split_whitespace()
            .skip(2)
            .filter(|a| !a.starts_with("https://"))
            .map(str::to_owned)
            .collect();
        assert_flags_exist(case, &args, &get_help);
    }
    // Cases it cannot play exit 127, as the runner asks.
    for (role, case) in [
        ("server", "v2"),
        ("server", "ecn"),
        ("server", "connectionmigration"),
        ("server", "no-such-case"),
        ("server", ""),
        ("client", "chacha20"),
        ("client", "keyupdate"),
        ("client", "v2"),
        ("client", "connectionmigration"),
    ] {
        let (code, out) = endpoint(&[("ROLE", role), ("TESTCASE", case)]);
        assert_eq!(code, 127, "{role} {case}: {out}");
        assert!(out.contains("not supported"), "{out}");
    }
}

/// The aioquic client of the interop tests (`scripts/interop-peers.sh`).
fn aioquic() -> PathBuf {
    let p = repo().join("target/toolchains/interop/bin/python");
    assert!(
        p.exists(),
        "aioquic is missing: bash scripts/interop-peers.sh (scripts/test.sh runs it)"
    );
    p
}

/// `tests/interop/client.py CASE` against `addr` with `alpn`: its JSON.
fn interop_client(
    alpn: &str,
    case: &str,
    addr: &str,
    cert: &Path,
    paths: &[&str],
) -> serde_json::Value {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let out = Command::new(aioquic())
        .arg(repo().join("tests/interop/client.py"))
        .args([case, host, port])
        .arg(cert)
        .args(paths)
        .env("TQ_INTEROP_ALPN", alpn)
        .output()
        .expect("run the aioquic client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{case}: no report ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_interop_endpoint_serves_www_over_http_0_9_and_http_3() {
    let dir = tempfile_dir("interop");
    let (www, certs) = (dir.join("www"), dir.join("certs"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    let cert = tq_host::tls::SelfSignedCertificate::generate(&["localhost"]).unwrap();
    std::fs::write(certs.join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(certs.join("priv.key"), &cert.key_pem).unwrap();
    // Files as the runner makes them: random names and bytes.
    let mut files = Vec::new();
    for (i, size) in [1024usize, 0, 300 << 10, 3 << 20].into_iter().enumerate() {
        let data: Vec<u8> = (0..size)
            .map(|j| (j * 31 + i * 7 + j / 251) as u8)
            .collect();
        let name = format!("f{i}-{size}");
        std::fs::write(www.join(&name), &data).unwrap();
        files.push((format!("/{name}"), data));
    }
    let sha = |d: &[u8]| -> String {
        boring::sha::sha256(d)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let check = |what: &str, report: &serde_json::Value, version: u64| {
        assert!(report["error"].is_null(), "{what}: {report}");
        let got = report["responses"].as_array().expect("responses");
        assert_eq!(got.len(), files.len(), "{what}: {report}");
        for (r, (p, data)) in got.iter().zip(&files) {
            assert_eq!(r["path"], p.as_str(), "{what}");
            assert_eq!(r["status"], 200, "{what}: {p}");
            assert_eq!(r["length"], data.len(), "{what}: {p}");
            assert_eq!(r["sha256"], sha(data).as_str(), "{what}: {p}");
        }
        assert_eq!(report["version"], version, "{what}");
    };
    let start_on = |case: &str, listen: &str| {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("interop/run_endpoint.sh"))
            .env("ROLE", "server")
            .env("TESTCASE", case)
            .env("WWW", &www)
            .env("CERTS", &certs)
            .env("LISTEN", listen)
            .env("TQ_HOST", BIN);
        spawn_listening(cmd)
    };
    let start = |case: &str| start_on(case, "127.0.0.1:0");
    // Runs the endpoint as the client of `case` against `addr`; checks
    // every file arrived whole.
    let client_case = |case: &str, addr: &str| {
        let downloads = dir.join(format!("downloads-{case}"));
        std::fs::create_dir_all(&downloads).unwrap();
        let qlogs = dir.join(format!("qlog-{case}"));
        std::fs::create_dir_all(&qlogs).unwrap();
        let requests: Vec<String> = files
            .iter()
            .map(|(p, _)| format!("https://{addr}{p}"))
            .collect();
        let out = Command::new("bash")
            .arg(repo().join("interop/run_endpoint.sh"))
            .env("ROLE", "client")
            .env("TESTCASE", case)
            .env("DOWNLOADS", &downloads)
            .env("REQUESTS", requests.join(" "))
            .env("TQ_HOST", BIN)
            .env("QLOGDIR", &qlogs)
            .output()
            .expect("run the client");
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // What the runner checks in its traces: connections per case, and
        // 0-RTT for zerortt (the client's qlogs here).
        let logs: Vec<String> = std::fs::read_dir(&qlogs)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        let connections = match case {
            "multiconnect" | "resumption" => files.len(),
            "zerortt" => 2,
            _ => 1,
        };
        assert_eq!(logs.len(), connections, "{case}: connections");
        let early = logs.iter().filter(|l| l.contains("\"0RTT\"")).count();
        assert_eq!(
            early,
            usize::from(case == "zerortt"),
            "{case}: 0-RTT connections"
        );
        for (p, data) in &files {
            let got = std::fs::read(downloads.join(&p[1..])).unwrap_or_default();
            assert!(
                got == *data,
                "{case} {p}: {} bytes, want {}",
                got.len(),
                data.len()
            );
        }
    };
    let cert_file = certs.join("cert.pem");

    // transfer: HTTP/0.9 (ALPN hq-interop), the files on one connection.
    let (server, addr, log) = start("transfer");
    assert!(log.iter().any(|l| l.contains("hq-interop")), "{log:?}");
    let r = interop_client("hq-interop", "transfer", &addr, &cert_file, &paths);
    check("transfer", &r, 1);
    assert_eq!(r["retries"], 0, "no Retry outside the retry case");
    // multiplexing (as `transfer`): 400 files at once, above the stream limit.
    let many: Vec<(String, Vec<u8>)> = (0..400)
        .map(|i| (format!("/m{i}"), vec![(i % 251) as u8; 50 + i]))
        .collect();
    for (p, d) in &many {
        std::fs::write(www.join(&p[1..]), d).unwrap();
    }
    let many_paths: Vec<&str> = many.iter().map(|(p, _)| p.as_str()).collect();
    let r = interop_client("hq-interop", "multiplexing", &addr, &cert_file, &many_paths);
    let got = r["responses"].as_array().expect("responses");
    assert_eq!(got.len(), many.len(), "{r}");
    for (g, (p, d)) in got.iter().zip(&many) {
        assert_eq!(
            (&g["status"], &g["sha256"]),
            (&serde_json::json!(200), &serde_json::json!(sha(d))),
            "{p}"
        );
    }
    // A path out of /www, or to nothing, resets its stream; the rest of
    // the connection is served.
    let r = interop_client(
        "hq-interop",
        "handshake",
        &addr,
        &cert_file,
        &["/../certs/priv.key", "/missing", paths[0]],
    );
    let statuses: Vec<_> = r["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].clone())
        .collect();
    assert_eq!(statuses, [0, 0, 200], "{r}");
    drop(server);

    // retry: the server sends one.
    let (server, addr, _) = start("retry");
    let r = interop_client("hq-interop", "retry", &addr, &cert_file, &paths[..1]);
    assert_eq!(r["retries"], 1, "{r}");
    drop(server);

    // zerortt: the second connection resumes and its request goes in 0-RTT.
    let (server, addr, _) = start("zerortt");
    let r = interop_client("hq-interop", "zerortt", &addr, &cert_file, &paths[..2]);
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(
        (&r["session_resumed"], &r["early_data_accepted"]),
        (&serde_json::json!(true), &serde_json::json!(true)),
        "{r}"
    );
    drop(server);

    // ipv6 (as `transfer`): the same over IPv6 loopback.
    let (server, addr, _) = start_on("transfer", "[::1]:0");
    assert!(addr.starts_with("[::1]:"), "{addr}");
    let r = interop_client("hq-interop", "transfer", &addr, &cert_file, &paths);
    check("ipv6", &r, 1);
    drop(server);

    // http3: the same files over HTTP/3.
    let (server, addr, _) = start("http3");
    let r = interop_client("h3", "http3", &addr, &cert_file, &paths);
    check("http3", &r, 1);
    // And the endpoint as the runner's client of that case: every file at
    // once, into the downloads directory, byte for byte.
    client_case("http3", &addr);
    drop(server);
    // The endpoint against itself in the HTTP/0.9 client cases.
    for case in ["transfer", "multiconnect", "resumption", "zerortt"] {
        let (server, addr, _) = start(case);
        client_case(case, &addr);
        drop(server);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
