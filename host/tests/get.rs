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
