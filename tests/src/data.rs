//! Test inputs and process-level helpers: payloads and their hashes, request
//! heads, where the built plugins are, bench arguments, resident memory, and
//! the tracing subscriber.

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = boring::hash::hash(boring::hash::MessageDigest::sha256(), data).expect("sha256");
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// Deterministic pseudo-random bytes (xorshift), so a payload is cheap to
/// make and a corruption anywhere changes its hash.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The head of a request to `localhost`: `:method`, `:scheme`, `:authority`
/// and `:path`, for tests that drive `H3Handle::send_request` directly.
pub fn request_head(method: &str, path: &str) -> Vec<tq_host::http3::Header> {
    tq_host::http3::headers(&[
        (":method", method),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ])
}

/// Where `scripts/build-plugins.sh` puts a plugin's component.
pub fn plugin_path(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the plugins first (bash scripts/build-plugins.sh, which scripts/test.sh runs)",
        p.display()
    );
    p
}

/// A test component built by another language's toolchain
/// (`target/components/<name>.wasm`, made by scripts/build-components.sh).
pub fn component_path(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the components first (bash scripts/build-components.sh, which scripts/test.sh runs)",
        p.display()
    );
    p
}

/// Installs a tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Resident memory of this process, KiB (Linux).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The value after `--name` on a bench's command line, or `default`.
pub fn bench_arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
