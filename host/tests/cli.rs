//! The `tq-host` binary end to end: serve the built-in site, fetch it with
//! `tq-host get`, and refuse bad input with clear messages.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn serves_the_built_in_site_and_get_fetches_it() {
    let (_server, addr) = serve(&[]);
    let out = Command::new(BIN)
        .args(["get", "-k", &format!("https://{addr}/")])
        .output()
        .expect("run get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tq-host is running"));

    let out = Command::new(BIN)
        .args(["get", "-k", "-d", "ping", &format!("https://{addr}/echo")])
        .output()
        .expect("run get");
    assert_eq!(out.stdout, b"ping");

    let out = Command::new(BIN)
        .args(["get", "-k", &format!("https://{addr}/missing")])
        .output()
        .expect("run get");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    // Without -k, the self-signed certificate is refused, and said so.
    let out = Command::new(BIN)
        .args(["get", &format!("https://{addr}/")])
        .output()
        .expect("run get");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown_ca"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn www_serves_a_directory_s_files_and_nothing_outside_it() {
    let dir = tempfile_dir("www");
    let www = dir.join("site");
    std::fs::create_dir_all(www.join("docs")).unwrap();
    std::fs::write(www.join("index.html"), "<p>home</p>").unwrap();
    std::fs::write(www.join("docs/big.bin"), vec![7u8; 200_000]).unwrap();
    std::fs::write(dir.join("secret.txt"), "outside").unwrap();
    let (_server, addr) = serve(&["--www", www.to_str().unwrap()]);
    let get = |args: &[&str]| {
        Command::new(BIN)
            .args(["get", "-k", "-s"])
            .args(args)
            .output()
            .expect("run get")
    };
    let out = get(&[&format!("https://{addr}/")]);
    assert_eq!(
        out.stdout,
        b"<p>home</p>",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Larger than one read: streamed, whole.
    let out = get(&[&format!("https://{addr}/docs/big.bin")]);
    assert_eq!(out.stdout, vec![7u8; 200_000]);
    let out = get(&["-I", &format!("https://{addr}/docs/big.bin")]);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        head.contains("content-length: 200000") && head.contains("application/octet-stream"),
        "{head}"
    );
    for path in [
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/missing",
        "/docs",
    ] {
        let out = get(&[&format!("https://{addr}{path}")]);
        assert_eq!(out.status.code(), Some(22), "{path}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("404"),
            "{path}"
        );
    }
    let out = get(&["-d", "x", &format!("https://{addr}/index.html")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("405"));

    // Refused at start: not a directory, with a plugin, hq without a directory.
    for (args, says) in [
        (vec!["--www", "/nonexistent"], "is not a directory"),
        (
            vec!["--www", www.to_str().unwrap(), "--plugin", "x.wasm"],
            "not both",
        ),
        (vec!["--app", "hq"], "--www DIR"),
        (
            vec!["--app", "echo", "--www", www.to_str().unwrap()],
            "the echo serves no files",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_echo_app_answers_tq_host_echo() {
    let (_server, addr) = serve(&["--app", "echo"]);
    let out = Command::new(BIN)
        .args(["echo", "-k", "-m", "hello there", &addr])
        .output()
        .expect("run echo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello there");
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("tq-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[quic]\nidle_timout = \"5s\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--config", cfg.to_str().unwrap()])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2") && err.contains("idle_timout"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cert",
            "/nonexistent/cert.pem",
            "--key",
            "/nonexistent/key.pem",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cert: cannot read /nonexistent/cert.pem"),
        "{err}"
    );
    // A file that exists but is no certificate.
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cfg.to_str().unwrap(),
            "--key",
            cfg.to_str().unwrap(),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cert: ") && err.contains("cannot load certificate chain"),
        "{err}"
    );

    let out = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--cert",
        "--config",
        "--no-retry",
        "--app",
        "--plugin",
        "--alpn",
        "--workers",
        "--server-id",
        "--stateless-reset-key-file",
        "--log-format",
        "--no-access-log",
        "--shutdown-timeout",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serves_a_plugin_of_either_http_world() {
    for (name, expected) in [
        ("hello", "hello from a tq-host plugin\n"),
        ("wasi_hello", "hello from a wasi:http component\n"),
    ] {
        let wasm = plugin_wasm(name);
        let (_server, addr) = serve(&["--plugin", wasm.to_str().unwrap()]);
        assert_eq!(get(&addr), expected, "{name}");
    }
}

#[test]
fn serves_a_raw_quic_plugin_under_the_alpn_given() {
    let wasm = plugin_wasm("echo");
    let wasm = wasm.to_str().unwrap();
    // Without --alpn the operator is told what is missing.
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--plugin", wasm])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("raw QUIC plugin") && err.contains("--alpn"),
        "{err}"
    );

    let (_server, addr) = serve(&["--plugin", wasm, "--alpn", "my-echo"]);
    let out = Command::new(BIN)
        .args(["echo", "-k", "--alpn", "my-echo", "-m", "raw hello", &addr])
        .output()
        .expect("run echo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "raw hello");
}

#[test]
fn reloads_through_the_admin_endpoint_and_sighup() {
    let dir = tempfile_dir("reload");
    let file = dir.join("app.wasm");
    std::fs::copy(plugin_wasm("version_a"), &file).unwrap();
    let mut l = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--plugin",
        file.to_str().unwrap(),
        "--no-watch",
        "--admin",
        "127.0.0.1:0",
        "--drain-timeout",
        "200ms",
    ]);
    let admin_addr = l.admin_addr();
    let addr = l.quic_addr();
    let server = &l.server;
    assert!(get(&addr).starts_with("version a "));
    let (status, body) = admin(&admin_addr, "GET", "/versions");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"current\": true") && body.contains("\"last_error\": null"),
        "{body}"
    );

    // A good file through POST /reload.
    std::fs::copy(plugin_wasm("version_b"), &file).unwrap();
    let (status, body) = admin(&admin_addr, "POST", "/reload");
    assert_eq!(
        (status, body.contains("\"reloaded\"")),
        (200, true),
        "{body}"
    );
    assert!(get(&addr).starts_with("version b "));
    let (_, body) = admin(&admin_addr, "POST", "/reload");
    assert!(body.contains("\"unchanged\""), "{body}");

    // A broken one is refused, said why, and b keeps answering.
    std::fs::write(&file, b"junk").unwrap();
    let (status, body) = admin(&admin_addr, "POST", "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not a WebAssembly file"), "{body}");
    let (_, body) = admin(&admin_addr, "GET", "/versions");
    assert!(body.contains("not a WebAssembly file"), "{body}");
    assert!(get(&addr).starts_with("version b "));

    // SIGHUP.
    std::fs::copy(plugin_wasm("version_a"), &file).unwrap();
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(&addr).starts_with("version a ") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = admin(&admin_addr, "GET", "/nope");
    assert_eq!(status, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("tq-cli-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x0d\0\x01\0").unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--plugin", bad.to_str().unwrap()])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot load the plugin")
            && err.contains("tq:plugin/http3-app")
            && err.contains("tq:plugin/quic-app"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_stops_gracefully_and_exits_0() {
    let (mut server, addr) = serve(&[]);
    assert!(get(&addr).contains("HTTP/3"));
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = server.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Killed by the signal, it would have no exit code.
    assert_eq!(status.code(), Some(0), "{status}");
}
