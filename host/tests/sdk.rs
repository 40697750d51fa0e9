//! The SDK ships: it carries its own copy of the WIT (identical to the
//! repository's), it packages, and a plugin crate outside the repository
//! that depends on the packaged crate builds and is served.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_sdk_carries_the_wit_it_builds_against() {
    let ours = std::fs::read_to_string(repo().join("wit/world.wit")).unwrap();
    let sdk = std::fs::read_to_string(repo().join("sdk/wit/world.wit")).unwrap();
    assert!(
        ours == sdk,
        "sdk/wit/world.wit differs from wit/world.wit: copy it (cp wit/world.wit sdk/wit/)"
    );
}

#[test]
fn a_plugin_outside_the_repository_builds_on_the_packaged_sdk_and_is_served() {
    let dir = tempfile_dir("sdk");
    let target = repo().join("target/wasm");
    // The crate as it would be uploaded.
    run(
        cargo()
            .args([
                "package",
                "--offline",
                "--no-verify",
                "--allow-dirty",
                "--manifest-path",
            ])
            .arg(repo().join("sdk/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target),
        "cargo package",
    );
    let crate_file = target.join("package/tq-sdk-0.1.0.crate");
    run(
        Command::new("tar")
            .arg("xzf")
            .arg(&crate_file)
            .arg("-C")
            .arg(&dir),
        "unpacking the crate",
    );
    let sdk = dir.join("tq-sdk-0.1.0");
    assert!(
        sdk.join("wit/world.wit").exists(),
        "the package lacks its WIT"
    );

    // A plugin crate of its own, as `cargo new --lib` would make it.
    let app = dir.join("outside");
    std::fs::create_dir_all(app.join("src")).unwrap();
    std::fs::write(
        app.join("Cargo.toml"),
        format!(
            "[package]\nname = \"outside\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\ntq-sdk = {{ path = {:?} }}\n\n[workspace]\n",
            sdk.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        app.join("src/lib.rs"),
        "use tq_sdk::http3::{App, Conn, Request};\n\n\
         #[derive(Default)]\nstruct Outside;\n\n\
         impl App for Outside {\n    fn on_request(&mut self, conn: &mut Conn, req: Request) {\n        \
         conn.respond(req.stream, 200, &[], b\"hello from outside the repository\\n\");\n    }\n}\n\n\
         tq_sdk::export_http3_app!(Outside);\n",
    )
    .unwrap();
    // The same dependency versions as the example plugins (offline).
    std::fs::copy(repo().join("plugins/Cargo.lock"), app.join("Cargo.lock")).unwrap();
    run(
        cargo()
            .args([
                "build",
                "--offline",
                "--release",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--manifest-path")
            .arg(app.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target),
        "building the plugin",
    );
    let wasm = target.join("wasm32-wasip2/release/outside.wasm");
    let (_server, addr) = serve(&["--plugin", wasm.to_str().unwrap()]);
    assert_eq!(get(&addr), "hello from outside the repository\n");
    let _ = std::fs::remove_dir_all(&dir);
}
