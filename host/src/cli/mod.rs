//! The `tq-host` command line: parses and validates everything before any
//! socket is bound, then wires the layers together. The only module that
//! knows every layer.

mod admin;
mod check;
mod config;
mod echo_client;
mod get;
mod hq_client;
mod new;
mod plan;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// A programmable QUIC and HTTP/3 server.
///
/// With no subcommand, `tq-host` serves: by default a built-in HTTP/3 site
/// (`GET /`, `POST /echo`, `GET /bytes/N`), with `--www DIR` a directory's
/// files, or with `--app echo` a raw-QUIC echo (ALPN `tq-echo`). Without --cert/--key it makes a self-signed
/// certificate for localhost and prints where it is.
///
/// Try it: `tq-host` in one terminal, `tq-host get -k https://127.0.0.1:4433/`
/// in another.
#[derive(Debug, Parser)]
#[command(name = "tq-host", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Send a message to a tq-echo server and print what comes back.
    Echo(echo_client::EchoArgs),
    /// Fetch a URL over HTTP/3, as curl would: the body to stdout (or
    /// -o FILE); several URLs of one server go at once over one connection,
    /// each to a file in --output-dir. Exit codes: 0 done, 6 cannot
    /// resolve, 7 no connection,
    /// 22 HTTP status 400 or above, 23 cannot write, 28 timeout, 56 the
    /// response was cut, 1 anything else.
    Get(get::GetArgs),
    /// Check a config file without serving: parse it, read every
    /// certificate, load every plugin (compile, link, `init`), bind
    /// nothing. Exits 0 if all is well; otherwise prints each problem with
    /// the file, line and key, and exits 1.
    Check(check::CheckArgs),
    /// Compile plugins into the compilation cache ahead of deployment, so
    /// the first start serves at once: `tq-host compile app.wasm` (with
    /// the server's --plugin-memory: it shapes the code), or `tq-host
    /// compile --config tq.toml` for every listener's plugin. Runs as the
    /// serving user; binds nothing.
    Compile(check::CompileArgs),
    /// Make a plugin crate that builds and is served as written:
    /// `tq-host new my-plugin [--world http3|quic|wasi-http]`, then
    /// `cd my-plugin && cargo build --release` (its README has the rest).
    New(new::NewArgs),
}

/// An error that asks for a particular exit code (`tq-host get`'s, as
/// curl's: 7 no connection, 22 HTTP error, 28 timeout, ...).
#[derive(Debug)]
pub struct Failure {
    /// The process's exit code.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line each, colours on a terminal.
    #[default]
    Human,
    /// For log shippers: one JSON object per line, with the fields of
    /// every enclosing span (a connection's id, peer and plugin version).
    Json,
}

/// The built-in applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// The built-in HTTP/3 site (ALPN `h3`).
    Page,
    /// The raw-QUIC echo (ALPN `tq-echo`).
    Echo,
    /// The `--www` directory's files over HTTP/0.9 on raw QUIC (ALPN
    /// `hq-interop`), the protocol of the QUIC Interop Runner.
    Hq,
}

/// Flags of `tq-host serve`.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Serve this WebAssembly component (built for wasm32-wasip2) instead of a
    /// built-in application. It implements `tq:plugin/http3-app` (served over
    /// HTTP/3), the standard `wasi:http/proxy` world (WASI 0.2) or
    /// `wasi:http/service` world (WASI 0.3; both served over HTTP/3, an
    /// instance per request), or `tq:plugin/quic-app` (a raw QUIC
    /// application; give its protocol with --alpn); tq-host tells which from
    /// its exports.
    #[arg(long, value_name = "WASM")]
    plugin: Option<PathBuf>,

    /// Plugins: do not watch the plugin file. By default a change to it is
    /// reloaded once it has stopped changing (checked every 200 ms): new
    /// connections get the new version, existing ones finish on theirs. A
    /// file that fails to load is refused and the running version keeps
    /// serving. SIGHUP reloads too.
    #[arg(long)]
    no_watch: bool,

    /// Plugins: after a reload, how long connections may stay on the old
    /// version before they are asked to close gracefully (GOAWAY, or
    /// `shutdown` for raw QUIC plugins), e.g. `60s`. Default: 60s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
    drain_timeout: Option<Duration>,

    /// On SIGTERM or SIGINT (what systemd, Kubernetes and Ctrl-C send):
    /// stop accepting, send every live connection GOAWAY (raw QUIC plugins:
    /// `shutdown`), wait this long for them to finish, close the rest, and
    /// exit 0. A second signal exits at once. Default: 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
    shutdown_timeout: Duration,

    /// Serve the admin endpoint (HTTP/1.1) here: `GET /healthz` (200 while
    /// the process runs), `GET /readyz` (200 while it accepts connections,
    /// 503 while draining; the endpoint opens once every listener is bound), `GET /metrics` (Prometheus text),
    /// and for plugins `GET /versions` (loaded versions) and `POST
    /// /reload`. Without a value it binds 127.0.0.1:9901. Bound to any
    /// other than a loopback address it needs a token (`--admin-token-file`
    /// or `TQ_ADMIN_TOKEN`), sent as `Authorization: Bearer TOKEN`; the
    /// probes and `/metrics` answer without it. Default: off.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9901")]
    admin: Option<SocketAddr>,

    /// Plugins: a file holding the admin endpoint's token (the environment
    /// variable `TQ_ADMIN_TOKEN` is read when this is not given). With a
    /// token, every admin request must carry it. Default: none.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,

    /// Application protocol (ALPN) clients must offer; repeatable. Default:
    /// `h3`, `tq-echo` with `--app echo`, `hq-interop` with `--app hq`.
    /// Required for a raw QUIC plugin.
    #[arg(long, value_name = "NAME")]
    alpn: Vec<String>,

    /// Plugins: linear memory per instance (one instance per connection),
    /// in MiB. Default: 64.
    #[arg(long, value_name = "MIB")]
    plugin_memory: Option<usize>,

    /// Plugins: instances alive at once. An http3-app or quic-app plugin
    /// holds one per connection, a wasi:http component one per request in
    /// flight; past it a connection is closed (or a request answered 500)
    /// and the log names this flag. Each costs address space (not memory)
    /// and about 6 of Linux's 65,530 memory mappings per process
    /// (`vm.max_map_count`), per plugin version: raise that sysctl before
    /// going past about 5,000. Default: 1000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    plugin_instances: Option<u32>,

    /// Plugins: core module instances one component may contain (the
    /// pooling allocator's slots are sized by it). Default: 32; a
    /// componentize-py component has 14, a Rust one 1 to 4.
    #[arg(long, value_name = "N")]
    plugin_core_instances: Option<u32>,

    /// Plugins: linear memories one component may define. Default: 4.
    #[arg(long, value_name = "N")]
    plugin_memories: Option<u32>,

    /// Plugins: tables one component may define. Default: 32.
    #[arg(long, value_name = "N")]
    plugin_tables: Option<u32>,

    /// Plugins: elements one table may hold. Default: 20000 (componentize-py
    /// components need about 5800, ComponentizeJS ones 7800).
    #[arg(long, value_name = "N")]
    plugin_table_elements: Option<usize>,

    /// Plugins: CPU time one hook call may take before the connection is
    /// closed, e.g. `1s`, `200ms`. Default: 1s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
    plugin_deadline: Option<Duration>,

    /// Plugins: wall-clock time one call into a plugin may take (a hook,
    /// instantiation, `init`, `on-close`), whatever it waits on; past it
    /// the connection is closed, or a reload refused. Default: 10s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
    plugin_call_timeout: Option<Duration>,

    /// Plugins (wasi:http): wall-clock time one request may take, body
    /// included; past it the request is answered 500 (or reset). Default: 60s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
    plugin_request_timeout: Option<Duration>,

    /// Plugins: let them read this host directory, as `HOST` or
    /// `HOST::GUEST` (where the plugin sees it). Read-only; repeatable.
    /// Default: no files at all.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    plugin_dirs: Vec<crate::plugin::DirGrant>,

    /// Plugins: set this environment variable, `KEY=VALUE`; repeatable.
    /// Default: an empty environment.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    plugin_env: Vec<(String, String)>,

    /// Plugins (wasi:http): let one instance serve up to N more requests
    /// after its first, one after another, instead of a fresh instance per
    /// request: faster, but state left by one request is seen by the next.
    /// Default: 0 (fresh every time).
    #[arg(long, value_name = "N")]
    reuse_instances: Option<u32>,

    /// Plugins (wasi:http): let them send requests to this destination:
    /// `HOST:PORT`, or `HOST` for its scheme's default port (443 for https,
    /// 80 for http) only; repeatable. Each instance has at most 16 in
    /// flight, each waiting at most 30 s to connect, for the first byte and
    /// between frames. Default: every outgoing request is refused with
    /// HTTP-request-denied. A granted name reaches only the public addresses
    /// it resolves to (checked, then connected to: no DNS rebinding); a
    /// granted IP address exactly that address.
    #[arg(long = "allow-http", value_name = "HOST[:PORT]")]
    allow_http: Vec<String>,

    /// Plugins (wasi:http): let a granted host name lead to internal
    /// addresses too (loopback, private, link-local, CGNAT, unique-local).
    #[arg(long = "allow-http-private")]
    allow_http_private: bool,

    /// What to serve: `page` (built-in HTTP/3 site, or the --www
    /// directory), `echo` (raw-QUIC echo) or `hq` (the --www directory
    /// over HTTP/0.9, ALPN `hq-interop`). Default: page.
    #[arg(long, value_enum)]
    app: Option<App>,

    /// Serve this directory's files (GET and HEAD; nothing outside it, no
    /// names starting with a dot, `index.html` for a path ending in `/`)
    /// instead of the built-in site, over HTTP/3, or over HTTP/0.9 with
    /// `--app hq`. Not with a plugin. Default: none.
    #[arg(long, value_name = "DIR")]
    www: Option<PathBuf>,

    /// Address to listen on; repeat for several sockets. Default:
    /// 127.0.0.1:4433.
    #[arg(long, short = 'l', value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Certificate chain (PEM). Without it a self-signed certificate is made.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,

    /// TOML file: transport settings under `[quic]`, HTTP/3 ones under
    /// `[http3]`, and one `[[listener]]` per service (address, certificate,
    /// ALPN, plugin, limits, grants; see README). Flags given on the
    /// command line win over the file. Check one with `tq-host check FILE`.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Sockets per listening address, each read by its own router on its
    /// own thread (SO_REUSEPORT): the kernel spreads clients over them by
    /// address. A connection stays on its socket; a packet of it that
    /// reaches another one (after the client's address changed) is handed
    /// over. Default: the number of CPUs.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// Issue connection ids that carry this server id in the plaintext
    /// form of QUIC-LB (draft-ietf-quic-load-balancers): 1 to 15 bytes in
    /// hex, e.g. `0a01`, unique per host behind one address, so a
    /// QUIC-aware load balancer routes every packet of a connection,
    /// migrated ones too, to the host that owns it. Default: random ids.
    #[arg(long, value_name = "HEX")]
    server_id: Option<String>,

    /// A file of at least 32 random bytes (or 64 hex digits) from which
    /// stateless reset tokens are derived, the same on every restart: a
    /// restarted host (or one of a fleet that shares the file) then answers
    /// packets of connections it no longer knows with a stateless reset,
    /// and clients give up at once instead of at their idle timeout.
    /// Share a key between hosts only with a distinct --server-id each (a
    /// host then answers only ids that carry its own): behind a balancer
    /// that hashes addresses, a host would hand out the token of another
    /// host's connection. Default: random tokens, and no resets sent.
    #[arg(long, value_name = "FILE")]
    stateless_reset_key_file: Option<PathBuf>,

    /// A file of at least 32 random bytes (or 64 hex digits) from which
    /// each listener derives the keys of its TLS session tickets (with its
    /// name). Hosts that share the file resume each other's sessions, and
    /// take each other's 0-RTT where early data is on; whoever holds it can
    /// impersonate them to clients holding tickets, so keep it as private
    /// as a certificate's key, and apart from the reset key. SIGHUP reads
    /// it again (with the certificates): replace it on every host, then
    /// reload, to rotate; tickets under the old key then get a full
    /// handshake. Default: random keys per listener, new at each reload.
    #[arg(long, value_name = "FILE")]
    session_ticket_key_file: Option<PathBuf>,

    /// How log lines look on stderr: `human` or `json` (one object per
    /// line, with the connection's id, peer and plugin version). Filter
    /// with TQ_LOG, e.g. `TQ_LOG=info,tq_host::access=off`. Default: human.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,

    /// Plugins: keep compiled code here, so a restart or a reload of bytes
    /// already compiled skips compiling (seconds for a large JavaScript or
    /// Python component). Entries are checked before use (owner, nobody
    /// else may write, checksum, wasmtime's own header) and the 16 most
    /// recently used are kept. Default: $TQ_CACHE_DIR, else
    /// $XDG_CACHE_HOME/tq-host, else ~/.cache/tq-host.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,

    /// Plugins: compile every start and reload; keep nothing on disk.
    #[arg(long)]
    no_cache: bool,

    /// Do not log a line per HTTP/3 request (target `tq_host::access`:
    /// method, path, status, bytes, duration, plugin version).
    #[arg(long)]
    no_access_log: bool,

    /// Turn off stateless Retry (address validation) for new connections,
    /// saving new clients a round trip. Once 512 handshakes from unproven
    /// addresses are in progress (`max_unvalidated_handshakes` in the
    /// config file), new clients get a Retry anyway, so spoofed Initials
    /// cannot pile up state. Default: Retry on.
    #[arg(long)]
    no_retry: bool,

    /// Close connections idle this long, e.g. `30s`, `500ms`. Default: 30s.
    #[arg(long, value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
    idle_timeout: Option<Duration>,

    /// Write one qlog file per connection into this directory.
    #[arg(long, value_name = "DIR")]
    qlog_dir: Option<PathBuf>,

    /// Append TLS secrets to this file in NSS key-log format (for Wireshark).
    #[arg(long, value_name = "FILE")]
    keylog_file: Option<PathBuf>,
}

impl Cli {
    /// The default log level: `info` when serving, `warn` for the client
    /// commands, whose output is the point.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            // quinn-udp warns of every refused send; the connection itself
            // reports that once, clearly.
            Some(Command::Echo(_))
            | Some(Command::Get(_))
            | Some(Command::Check(_))
            | Some(Command::Compile(_)) => "warn,quinn_udp=error",
            _ => "info,quinn_udp=error",
        }
    }

    /// The log format asked for (`--log-format`).
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Some(Command::Serve(a)) => a.log_format.unwrap_or_default(),
            None => self.serve.log_format.unwrap_or_default(),
            _ => LogFormat::Human,
        }
    }
}

impl ServeArgs {
    /// The compilation cache to use, if any.
    fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(crate::plugin::default_cache_dir)
        }
    }

    /// The first listener flag given on the command line, if any.
    fn listener_flag_given(&self) -> Option<&'static str> {
        [
            (self.plugin.is_some(), "--plugin"),
            (!self.listen.is_empty(), "--listen"),
            (self.cert.is_some(), "--cert"),
            (!self.alpn.is_empty(), "--alpn"),
            (self.app.is_some(), "--app"),
            (self.drain_timeout.is_some(), "--drain-timeout"),
            (self.plugin_memory.is_some(), "--plugin-memory"),
            (self.plugin_instances.is_some(), "--plugin-instances"),
            (
                self.plugin_core_instances.is_some(),
                "--plugin-core-instances",
            ),
            (self.plugin_memories.is_some(), "--plugin-memories"),
            (self.plugin_tables.is_some(), "--plugin-tables"),
            (
                self.plugin_table_elements.is_some(),
                "--plugin-table-elements",
            ),
            (self.plugin_deadline.is_some(), "--plugin-deadline"),
            (self.plugin_call_timeout.is_some(), "--plugin-call-timeout"),
            (
                self.plugin_request_timeout.is_some(),
                "--plugin-request-timeout",
            ),
            (self.reuse_instances.is_some(), "--reuse-instances"),
            (!self.plugin_dirs.is_empty(), "--dir"),
            (!self.plugin_env.is_empty(), "--env"),
            (!self.allow_http.is_empty(), "--allow-http"),
            (self.allow_http_private, "--allow-http-private"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// `--alpn`, if given.
    fn alpn_given(&self) -> Option<Vec<String>> {
        (!self.alpn.is_empty()).then(|| self.alpn.clone())
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Parses the command line and runs it.
///
/// # Errors
/// Any failure, with context, for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Serve(args)) => serve::run(*args).await,
        Some(Command::Echo(args)) => echo_client::run(args).await,
        Some(Command::Get(args)) => get::run(args).await,
        Some(Command::Check(args)) => check::run(args).await,
        Some(Command::Compile(args)) => check::compile(args).await,
        Some(Command::New(args)) => new::run(args),
        None => serve::run(cli.serve).await,
    }
}
