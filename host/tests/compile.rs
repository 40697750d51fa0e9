//! The compilation cache through the binary: `tq-host compile` fills it,
//! a start then loads from it, and an altered entry is never loaded.

mod common;

use std::process::Command;

use common::*;

/// Starts the server on `plugin` with `cache`; returns its "plugin
/// loaded" line.
fn loaded_line(plugin: &std::path::Path, cache: &std::path::Path) -> String {
    let mut l = Logged::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--plugin",
        plugin.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    l.wait_for("saying the plugin loaded", |s| s.contains("plugin loaded"))
}

#[test]
fn compile_fills_the_cache_a_start_uses_it_and_an_altered_entry_is_refused() {
    let dir = tempfile_dir("compile");
    let cache = dir.join("cache");
    let plugin = plugin_wasm("hello");
    let text = run(
        Command::new(BIN)
            .args(["compile", plugin.to_str().unwrap(), "--cache-dir"])
            .arg(&cache),
        "tq-host compile",
    );
    assert!(
        text.contains(", compiled") && text.contains("cache: "),
        "{text}"
    );

    let line = loaded_line(&plugin, &cache);
    assert!(line.contains("from_cache=true"), "{line}");

    // Alter the entry's code: the checksum catches it, the plugin is
    // compiled again and the entry replaced.
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("an entry");
    let mut data = std::fs::read(&entry).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&entry, &data).unwrap();
    let line = loaded_line(&plugin, &cache);
    assert!(line.contains("from_cache=false"), "{line}");
    assert!(loaded_line(&plugin, &cache).contains("from_cache=true"));

    // Other limits shape other code: no stale entry is used.
    let text = run(
        Command::new(BIN)
            .args([
                "compile",
                plugin.to_str().unwrap(),
                "--plugin-memory",
                "32",
                "--cache-dir",
            ])
            .arg(&cache),
        "tq-host compile --plugin-memory 32",
    );
    assert!(text.contains(", compiled"), "{text}");
    let entries = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(entries, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
