//! `tq-host get` as curl users expect it: -o, -I, -w, and exit codes that
//! tell a connection failure from an HTTP error.

mod common;

use std::process::Command;

use common::*;

fn get_args(args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    get_with(args)
}

#[test]
fn output_head_write_out_and_exit_codes() {
    let (_server, addr) = serve(&[]);
    let url = |p: &str| format!("https://{addr}{p}");
    let dir = tempfile_dir("get");

    // -o: the body to a file, nothing on stdout.
    let file = dir.join("body");
    let (code, out, err) = get_args(&["-k", "-o", file.to_str().unwrap(), &url("/bytes/3000000")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.is_empty());
    let body = std::fs::read(&file).unwrap();
    assert_eq!(body.len(), 3_000_000);
    assert!(body.iter().all(|b| *b == b'x'));

    // -I: the head only.
    let (code, out, err) = get_args(&["-k", "-I", &url("/bytes/1234")]);
    assert_eq!(code, Some(0), "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/3 200\r\n"), "{text}");
    assert!(text.contains("content-length: 1234\r\n"), "{text}");
    assert!(!text.contains("xxxx"), "{text}");

    // -w: the figures after the transfer; -H adds a header.
    let (code, out, err) = get_args(&[
        "-k",
        "-H",
        "x-request-id: 42",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{time_total}\\n",
        &url("/bytes/1000"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let text = String::from_utf8_lossy(&out);
    let fields: Vec<&str> = text.trim_end().split(' ').collect();
    assert_eq!(&fields[..2], ["200", "1000"], "{text}");
    assert!(fields[2].parse::<f64>().unwrap() > 0.0, "{text}");

    // HTTP errors: the body still printed, exit 22 (curl -f's).
    let (code, out, _) = get_args(&["-k", &url("/nope")]);
    assert_eq!(code, Some(22));
    assert_eq!(String::from_utf8_lossy(&out), "not found\n");

    // Nothing listening: 7. Something that never answers: 28.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (code, _, err) = get_args(&["-k", &format!("https://127.0.0.1:{closed_port}/")]);
    assert_eq!(code, Some(7), "{err}");
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (code, _, err) = get_args(&[
        "-k",
        "--timeout",
        "1s",
        &format!("https://127.0.0.1:{port}/"),
    ]);
    assert_eq!(code, Some(28), "{err}");

    // A bad header is refused before anything is sent.
    let out = Command::new(BIN)
        .args(["get", "-k", "-H", "nocolon", &url("/")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name: value"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_address_url_is_checked_against_the_certificate_s_addresses() {
    let dir = tempfile_dir("get-ip");
    // One certificate naming 127.0.0.1 and one naming localhost only.
    let both = tq_host::tls::SelfSignedCertificate::generate(&["localhost", "127.0.0.1"]).unwrap();
    let name_only = tq_host::tls::SelfSignedCertificate::generate(&["localhost"]).unwrap();
    for (cert, ok) in [(both, true), (name_only, false)] {
        let sub = dir.join(if ok { "both" } else { "name-only" });
        std::fs::create_dir_all(&sub).unwrap();
        let paths = cert.write_to(&sub).unwrap();
        let (cert_pem, key_pem) = (
            paths.cert.to_str().unwrap().to_owned(),
            paths.key.to_str().unwrap().to_owned(),
        );
        let (_server, addr) = serve(&["--cert", &cert_pem, "--key", &key_pem]);
        let port = addr.rsplit(':').next().unwrap();
        let (code, out, err) =
            get_args(&["--ca", &cert_pem, &format!("https://127.0.0.1:{port}/")]);
        if ok {
            assert_eq!(code, Some(0), "{err}");
            assert!(String::from_utf8_lossy(&out).contains("tq-host"));
        } else {
            // Refused as a connection failure, saying why.
            assert_eq!(code, Some(7), "{err}");
            assert!(err.contains("not valid for 127.0.0.1"), "{err}");
        }
        // By name, both are good.
        let (code, _, err) = get_args(&["--ca", &cert_pem, &format!("https://localhost:{port}/")]);
        assert_eq!(code, Some(0), "{err}");
    }
}

#[test]
fn several_urls_go_at_once_over_one_connection_to_files() {
    let (_server, addr) = serve(&[]);
    let url = |p: &str| format!("https://{addr}{p}");
    let dir = tempfile_dir("get-many");
    let d = dir.to_str().unwrap();
    let (code, out, err) = get_args(&[
        "-k",
        "--output-dir",
        d,
        "-w",
        "%{http_code} %{size_download}\\n",
        &url("/bytes/10"),
        &url("/bytes/300000"),
        &url("/"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    // -w once per URL, in URL order.
    assert_eq!(
        String::from_utf8_lossy(&out).lines().collect::<Vec<_>>()[..2],
        ["200 10", "200 300000"]
    );
    assert_eq!(std::fs::read(dir.join("10")).unwrap(), vec![b'x'; 10]);
    assert_eq!(std::fs::read(dir.join("300000")).unwrap().len(), 300_000);
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(page.contains("tq-host is running"), "{page}");

    // One missing: the others are still written, and the exit code says 22.
    let (code, _, err) = get_args(&["-k", "--output-dir", d, &url("/bytes/5"), &url("/missing")]);
    assert_eq!(code, Some(22), "{err}");
    assert!(err.contains("/missing") && err.contains("404"), "{err}");
    assert_eq!(std::fs::read(dir.join("5")).unwrap(), b"xxxxx");

    // Refused before connecting: no directory for several, two servers,
    // a name that would leave the directory.
    for (args, says) in [
        (vec![url("/a"), url("/b")], "--output-dir"),
        (
            vec![
                "--output-dir".into(),
                d.into(),
                url("/a"),
                "https://example.com:1/b".into(),
            ],
            "same server",
        ),
        (
            vec!["--output-dir".into(), d.into(), url("/x/..")],
            "no file name",
        ),
    ] {
        let mut all = vec!["-k".to_owned()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, _, err) = get_args(&refs);
        assert_ne!(code, Some(0));
        assert!(err.contains(says), "{refs:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hq_fetches_http_0_9_per_connection_as_asked_and_resumes_in_0_rtt() {
    let dir = tempfile_dir("get-hq");
    let www = dir.join("www");
    let dl = dir.join("dl");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(&dl).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("big"), &big).unwrap();
    std::fs::write(www.join("small"), b"small").unwrap();
    std::fs::write(www.join("small2"), b"small2").unwrap();
    let conf = dir.join("early.toml");
    std::fs::write(&conf, "[quic]\nenable_early_data = true\n").unwrap();
    let (_server, addr) = serve(&[
        "--app",
        "hq",
        "--www",
        www.to_str().unwrap(),
        "-c",
        conf.to_str().unwrap(),
    ]);
    let url = |p: &str| format!("https://{addr}{p}");
    let d = dl.to_str().unwrap();

    // All at once on one connection; a missing file fails alone.
    let (code, _, err) = get_args(&[
        "-k",
        "--hq",
        "--output-dir",
        d,
        &url("/big"),
        &url("/small"),
        &url("/nope"),
    ]);
    assert_eq!(code, Some(56), "{err}");
    assert!(err.contains("/nope") && err.contains("reset"), "{err}");
    assert_eq!(std::fs::read(dl.join("big")).unwrap(), big);
    assert_eq!(std::fs::read(dl.join("small")).unwrap(), b"small");

    // A connection per URL.
    let (code, out, err) = get_args(&[
        "-k",
        "--hq",
        "--connection-per-url",
        "-w",
        "%{size_download}\\n",
        "--output-dir",
        d,
        &url("/big"),
        &url("/small"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "300000\n5\n");

    // The first alone, the rest on a second connection that resumes and
    // sends them in 0-RTT: the client's qlog of that connection shows 0-RTT
    // packets.
    let qlogs = dir.join("qlog");
    std::fs::create_dir_all(&qlogs).unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "get",
            "-k",
            "--hq",
            "--reconnect-after-first",
            "--early-data",
            "--output-dir",
            d,
        ])
        .args([url("/small"), url("/big"), url("/small2")])
        .env("QLOGDIR", &qlogs)
        .output()
        .expect("run get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dl.join("big")).unwrap(), big);
    let logs: Vec<String> = std::fs::read_dir(&qlogs)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(logs.len(), 2, "two connections");
    let early = logs.iter().filter(|l| l.contains("\"0RTT\"")).count();
    assert_eq!(early, 1, "exactly one connection sent 0-RTT packets");

    // Two URLs saved under one name are refused before connecting.
    let (code, _, err) = get_args(&[
        "-k",
        "--hq",
        "--output-dir",
        d,
        &url("/small"),
        &url("/x/small"),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("saved as small"), "{err}");

    // Nothing listening: the first connection fails, the rest fail at once
    // with it (not a timeout each), with curl's exit code.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let started = std::time::Instant::now();
    let (code, _, err) = get_args(&[
        "-k",
        "--hq",
        "--connection-per-url",
        "--timeout",
        "1s",
        "--output-dir",
        d,
        &gone("/a"),
        &gone("/b"),
        &gone("/c"),
    ]);
    assert!(matches!(code, Some(7) | Some(28)), "{code:?}: {err}");
    assert!(err.contains("3 of 3 URLs failed"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
