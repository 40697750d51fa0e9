//! `tq-host new NAME [--world http3|quic|wasi-http]`: a plugin crate that
//! builds and is served as written — Cargo.toml, src/lib.rs with a working
//! example, a README with the commands, and `.cargo/config.toml` setting
//! the wasm target — so a plugin author's first hour starts from something
//! that runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

/// Flags of `tq-host new`.
#[derive(Debug, Args)]
pub(super) struct NewArgs {
    /// The crate's directory (its last component is the crate's name),
    /// e.g. `my-plugin`.
    #[arg(value_name = "PATH")]
    path: PathBuf,

    /// Which kind of plugin: `http3` (HTTP/3 requests, state per
    /// connection), `quic` (a raw QUIC connection's application) or
    /// `wasi-http` (the standard wasi:http world). Default: http3.
    #[arg(long, value_enum, default_value_t = WorldChoice::Http3)]
    world: WorldChoice,

    /// Depend on a local tq-sdk at this path (as well as on its version),
    /// e.g. a checkout of tq-host's `sdk/`.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

/// The worlds a scaffold can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum WorldChoice {
    /// `tq:plugin/http3-app`.
    Http3,
    /// `tq:plugin/quic-app`.
    Quic,
    /// `wasi:http/proxy`.
    WasiHttp,
}

/// The SDK version scaffolds depend on.
const SDK_VERSION: &str = "0.1";

pub(super) fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = args
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the path needs a last component: the crate's name")?
        .to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!(
            "`{name}` is not a crate name: letters, digits, `-` and `_`, not starting with a digit"
        );
    }
    if args.path.exists() {
        bail!(
            "{} already exists; give a new directory",
            args.path.display()
        );
    }
    let sdk = match &args.sdk {
        Some(p) => {
            let abs = std::fs::canonicalize(p)
                .with_context(|| format!("cannot find the SDK at {}", p.display()))?;
            if !abs.join("Cargo.toml").exists() {
                bail!("{} has no Cargo.toml: not the SDK", abs.display());
            }
            format!(
                "{{ version = \"{SDK_VERSION}\", path = {:?} }}",
                abs.display().to_string()
            )
        }
        None => format!("\"{SDK_VERSION}\""),
    };
    let lib = name.replace('-', "_");
    let (source, serve, try_it, what) = match args.world {
        WorldChoice::Http3 => (
            HTTP3_LIB,
            format!("tq-host --plugin target/wasm32-wasip2/release/{lib}.wasm"),
            "tq-host get -k https://127.0.0.1:4433/".to_owned(),
            "an HTTP/3 plugin (tq:plugin/http3-app): one instance per connection",
        ),
        WorldChoice::Quic => (
            QUIC_LIB,
            format!("tq-host --plugin target/wasm32-wasip2/release/{lib}.wasm --alpn {name}"),
            format!("tq-host echo -k --alpn {name} -m hello 127.0.0.1:4433"),
            "a raw QUIC plugin (tq:plugin/quic-app): the connection's whole application",
        ),
        WorldChoice::WasiHttp => (
            WASI_HTTP_LIB,
            format!("tq-host --plugin target/wasm32-wasip2/release/{lib}.wasm"),
            "tq-host get -k https://127.0.0.1:4433/".to_owned(),
            "a standard wasi:http handler (wasi:http/proxy): runs on tq-host and any wasi:http host",
        ),
    };
    let files: [(&str, String); 5] = [
        (
            "Cargo.toml",
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
                 [lib]\n# A WebAssembly component: built for wasm32-wasip2 (see .cargo/config.toml).\n\
                 crate-type = [\"cdylib\"]\n\n[dependencies]\ntq-sdk = {sdk}\n\n\
                 [profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\n"
            ),
        ),
        ("src/lib.rs", source.to_owned()),
        (
            ".cargo/config.toml",
            CARGO_CONFIG.to_owned(),
        ),
        (".gitignore", "/target\n".to_owned()),
        (
            "README.md",
            format!(
                "# {name}\n\n{what}, written with tq-sdk.\n\n```sh\n\
                 rustup target add wasm32-wasip2   # once\n\
                 cargo build --release             # the target is set in .cargo/config.toml\n\
                 {serve}\n\
                 {try_it}                          # from another terminal\n```\n\n\
                 Edit `src/lib.rs`; tq-host reloads the `.wasm` when it changes.\n"
            ),
        ),
    ];
    for (rel, text) in &files {
        write(&args.path.join(rel), text)?;
    }
    println!("created {} ({what})", args.path.display());
    println!(
        "  cd {} && cargo build --release && {serve}",
        args.path.display()
    );
    Ok(())
}

/// A new project's `.cargo/config.toml`: the target, and a stack of 128
/// KiB. Rust's default 1 MiB stack comes first in linear memory, so every
/// instance would start at 1 MiB and a fresh instance's reset would cost
/// the whole of it (a wasi:http request on a fresh instance: 54 us of
/// server CPU with the default, 35 us with this; BENCHMARKS.md).
const CARGO_CONFIG: &str = "\
# Plugins are WebAssembly components: build for WASI 0.2.
[build]
target = \"wasm32-wasip2\"

# A 128 KiB stack instead of Rust's 1 MiB: the stack is the start of the
# plugin's memory, so a smaller one makes every instance smaller and a fresh
# one cheaper to make. Running past it traps (that request or connection
# ends); raise it here if deep recursion needs more.
[target.wasm32-wasip2]
rustflags = [\"-C\", \"link-arg=-zstack-size=131072\"]
";

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

const HTTP3_LIB: &str = r#"//! An HTTP/3 plugin for tq-host: one value of `App` lives per connection,
//! so its fields keep state across that connection's requests.

use tq_sdk::http3::{App, Conn, Request};

#[derive(Default)]
struct App1 {
    requests: u64,
}

impl App for App1 {
    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        self.requests += 1;
        let text = [("content-type", "text/plain")];
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => {
                let body = format!("hello, request {} on this connection\n", self.requests);
                conn.respond(req.stream, 200, &text, body.as_bytes());
            }
            _ => conn.respond(req.stream, 404, &text, b"not found\n"),
        }
    }
}

tq_sdk::export_http3_app!(App1);
"#;

const QUIC_LIB: &str = r#"//! A raw QUIC plugin for tq-host: an echo. Every byte a client sends on a
//! stream comes back on it; the host holds back reading while the echo
//! waits, so nothing piles up here.

use tq_sdk::quic::{App, Conn, StreamId};

#[derive(Default)]
struct Echo;

impl App for Echo {
    fn on_stream_data(&mut self, conn: &mut Conn, stream: StreamId, data: &[u8], fin: bool) {
        conn.write(stream, data, fin);
    }
}

tq_sdk::export_quic_app!(Echo);
"#;

const WASI_HTTP_LIB: &str = r#"//! A standard wasi:http handler: a fresh instance per request, on tq-host
//! (over HTTP/3) or on any wasi:http host.

use tq_sdk::http::{Handler, Request, Response};

struct Hello;

impl Handler for Hello {
    fn handle(req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => Response::text(200, "hello from a wasi:http handler\n"),
            _ => Response::text(404, "not found\n"),
        }
    }
}

tq_sdk::export_http_handler!(Hello);
"#;
