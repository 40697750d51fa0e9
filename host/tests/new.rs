//! `tq-host new`: each world's scaffold builds as written and is served.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Scaffolds `world` and builds it as its README says; the `.wasm` path.
fn scaffold(dir: &Path, world: &str) -> PathBuf {
    let name = format!("scaffold-{world}");
    let krate = dir.join(&name);
    run(
        Command::new(BIN)
            .args(["new", krate.to_str().unwrap(), "--world", world, "--sdk"])
            .arg(repo().join("sdk")),
        "tq-host new",
    );
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        ".cargo/config.toml",
    ] {
        assert!(krate.join(f).exists(), "{world}: no {f}");
    }
    let readme = std::fs::read_to_string(krate.join("README.md")).unwrap();
    assert!(readme.contains("cargo build --release"), "{readme}");
    // Offline, with the versions the example plugins use.
    std::fs::copy(repo().join("plugins/Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let target = repo().join("target/wasm");
    run(
        cargo()
            .args(["build", "--release", "--offline", "--target-dir"])
            .arg(&target)
            .current_dir(&krate),
        "cargo build",
    );
    let wasm = target.join(format!(
        "wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ));
    assert!(wasm.exists(), "{}", wasm.display());
    // Its .cargo/config.toml gives it a 128 KiB stack, not Rust's 1 MiB:
    // the instance starts at 3 pages, not 17 (built outside this repository,
    // so only the scaffold's own config applies).
    let plugin = tq_host::plugin::Plugin::load(&wasm, Default::default()).unwrap();
    let kib = plugin.initial_memory_bytes() >> 10;
    assert!((64..=256).contains(&kib), "{world} starts with {kib} KiB");
    wasm
}

#[test]
fn every_world_s_scaffold_builds_and_is_served() {
    let dir = tempfile_dir("new");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let wasm = scaffold(&dir, "http3");
    let (_s, addr) = serve(&["--plugin", wasm.to_str().unwrap()]);
    assert_eq!(get(&addr), "hello, request 1 on this connection\n");

    let wasm = scaffold(&dir, "wasi-http");
    let (_s, addr) = serve(&["--plugin", wasm.to_str().unwrap()]);
    assert_eq!(get(&addr), "hello from a wasi:http handler\n");

    let wasm = scaffold(&dir, "quic");
    let (_s, addr) = serve(&[
        "--plugin",
        wasm.to_str().unwrap(),
        "--alpn",
        "scaffold-quic",
    ]);
    let out = run(
        Command::new(BIN).args([
            "echo",
            "-k",
            "--alpn",
            "scaffold-quic",
            "-m",
            "hello",
            &addr,
        ]),
        "tq-host echo",
    );
    assert_eq!(out.trim(), "hello");

    // A name cargo would refuse, and an existing directory, are refused.
    let out = Command::new(BIN)
        .args(["new"])
        .arg(dir.join("9bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(BIN).args(["new"]).arg(&dir).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let _ = std::fs::remove_dir_all(&dir);
}
