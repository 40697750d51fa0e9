//! The files in `deploy/` stay true to the binary: every flag they pass
//! exists in `tq-host --help`, every config they ship passes `tq-host
//! check`, the drain arithmetic of the unit and the Deployment holds, and
//! every metric the dashboard queries is one the server exports.

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
    m.plugin_call("v", Duration::ZERO, CallOutcome::Ok);
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
