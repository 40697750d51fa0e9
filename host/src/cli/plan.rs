//! What to serve, resolved from the flags and the config file and checked
//! before any socket is bound: each listener's addresses, certificate,
//! protocol and application, with its plugin loaded and validated. `serve`
//! binds what this returns; `check` stops here.
//!
//! Precedence: a flag given on the command line wins over the file; with
//! several `[[listener]]`s, listener flags (`--plugin`, `--listen`, ...)
//! are refused, since they could not say which listener they mean.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tracing::info;

use super::config::{ConfigFile, ListenerConfig, Source};
use super::{App, ServeArgs};
use crate::metrics::ServiceMetrics;
use crate::plugin::{DirGrant, LivePlugin, PluginGrants, PluginLimits, World};
use crate::quic::{ConnectionParams, QuicSettings, SessionTicketKey, TlsCertificatePaths};

/// Whether a plan is for serving or only for `check` (which makes no
/// self-signed certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Serve,
    Check,
}

/// A wasi:http component that starts with at least this much memory gets
/// a hint at load: with a fresh instance per request, resetting it is most
/// of a request's cost (a Rust component with the default 1 MiB stack
/// starts at 1.06 MiB).
const FRESH_MEMORY_HINT: u64 = 1 << 20;

/// The default UDP address.
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:4433";

/// Everything `serve` needs, checked.
pub(super) struct Plan {
    pub(super) http3: crate::http3::Http3Settings,
    pub(super) listeners: Vec<ListenerPlan>,
}

/// One listener, checked.
pub(super) struct ListenerPlan {
    pub(super) name: String,
    pub(super) listen: Vec<SocketAddr>,
    pub(super) params: ConnectionParams,
    pub(super) app: App,
    /// The directory `page` or `hq` serves, if any.
    pub(super) www: Option<PathBuf>,
    pub(super) plugin: Option<PluginPlan>,
}

/// A listener's plugin, loaded.
pub(super) struct PluginPlan {
    pub(super) live: LivePlugin,
    pub(super) watch: bool,
}

/// Where a setting came from, for error messages: a flag, or a key of the
/// file at a line.
#[derive(Clone)]
enum Origin<'a> {
    Flag(&'static str),
    File {
        source: &'a Source,
        key: String,
        span: std::ops::Range<usize>,
    },
}

impl Origin<'_> {
    fn say(&self, msg: impl std::fmt::Display) -> String {
        match self {
            Origin::Flag(f) => format!("{f}: {msg}"),
            Origin::File { source, key, span } => source.error(span.clone(), key, msg),
        }
    }
}

/// Resolves and checks the whole plan. Loads every plugin (compiling it
/// and running its `init`), reads every certificate; binds nothing.
/// `metrics` receives what the plugins report.
pub(super) async fn build(
    args: &ServeArgs,
    metrics: Arc<dyn ServiceMetrics>,
    mode: Mode,
) -> anyhow::Result<Plan> {
    let (file, source) = match &args.config {
        Some(p) => {
            let loaded = ConfigFile::load(p).map_err(anyhow::Error::msg)?;
            (loaded.file, Some(loaded.source))
        }
        None => (ConfigFile::default(), None),
    };
    let mut settings = file.quic;
    if args.no_retry {
        settings.enable_retry = false;
    }
    if let Some(t) = args.idle_timeout {
        settings.max_idle_timeout = t;
    }
    if let Some(d) = &args.qlog_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot create qlog directory {}", d.display()))?;
        settings.qlog_dir = Some(d.clone());
    }
    if let Some(f) = &args.keylog_file {
        settings.keylog_file = Some(f.clone());
    }

    let configs: Vec<(ListenerConfig, Option<&Source>)> = if file.listener.is_empty() {
        vec![(ListenerConfig::default(), None)]
    } else {
        file.listener
            .into_iter()
            .map(|l| (l, source.as_ref()))
            .collect()
    };
    if configs.len() > 1 {
        if let Some(flag) = args.listener_flag_given() {
            bail!(
                "{flag} cannot be used with a config file of {} [[listener]]s: it could not \
                 say which one it means; set it in the file instead",
                configs.len()
            );
        }
    }
    let ticket_key = ticket_key(args)?;
    // Every listener is checked, and every problem reported, not only the
    // first.
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    let mut seen_addrs: Vec<(SocketAddr, String)> = Vec::new();
    let mut seen_names: Vec<String> = Vec::new();
    for (i, (cfg, src)) in configs.into_iter().enumerate() {
        match listener(i, cfg, src, args, &settings, metrics.clone(), mode).await {
            Ok(mut l) => {
                if let Some(key) = &ticket_key {
                    l.params = l.params.session_ticket_key(key.for_listener(&l.name));
                }
                // A name picks the listener's session-ticket keys (with
                // --session-ticket-key-file) and its line in /versions:
                // two alike would share both.
                if seen_names.contains(&l.name) {
                    errors.push(format!(
                        "{}: another listener has this name; give each its own `name`",
                        l.name
                    ));
                }
                seen_names.push(l.name.clone());
                for a in &l.listen {
                    if let Some((_, other)) =
                        seen_addrs.iter().find(|(b, _)| b == a && a.port() != 0)
                    {
                        errors.push(format!("{}: {a} is also used by {other}", l.name));
                    }
                    seen_addrs.push((*a, l.name.clone()));
                }
                listeners.push(l);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!(errors.join("\n"));
    }
    Ok(Plan {
        http3: file.http3,
        listeners,
    })
}

/// The `--session-ticket-key-file` key, read once for every listener.
fn ticket_key(args: &ServeArgs) -> anyhow::Result<Option<SessionTicketKey>> {
    let Some(f) = &args.session_ticket_key_file else {
        return Ok(None);
    };
    let key = SessionTicketKey::from_file(f)
        .map_err(|e| anyhow::anyhow!("--session-ticket-key-file: {e}"))?;
    // One secret for two jobs would tie them together: refused.
    if let Some(r) = &args.stateless_reset_key_file {
        if SessionTicketKey::from_file(r).is_ok_and(|r| r.same_secret_as(&key)) {
            bail!(
                "--session-ticket-key-file and --stateless-reset-key-file hold the same key; \
                 give each its own (head -c 32 /dev/urandom > FILE)"
            );
        }
    }
    Ok(Some(key))
}

/// One listener from its `[[listener]]` (or an empty one) and the flags.
async fn listener(
    index: usize,
    cfg: ListenerConfig,
    src: Option<&Source>,
    args: &ServeArgs,
    settings: &QuicSettings,
    metrics: Arc<dyn ServiceMetrics>,
    mode: Mode,
) -> anyhow::Result<ListenerPlan> {
    let name = cfg
        .name
        .clone()
        .unwrap_or_else(|| format!("listener[{index}]"));
    let key = |k: &str| format!("listener[{index}].{k}");
    let file_origin = |k: &str, span: std::ops::Range<usize>| match src {
        Some(source) => Origin::File {
            source,
            key: key(k),
            span,
        },
        None => Origin::Flag("--config"),
    };
    let resolve = |p: &std::path::Path| src.map_or_else(|| p.to_owned(), |s| s.resolve(p));

    let listen = if !args.listen.is_empty() {
        args.listen.clone()
    } else if let Some(l) = cfg.listen.as_ref().filter(|l| !l.get_ref().is_empty()) {
        l.get_ref().clone()
    } else if let Some(source) = src {
        let span = cfg.listen.as_ref().map_or(0..0, |l| l.span());
        bail!(source.error(
            span,
            &key("listen"),
            "a listener needs at least one address, e.g. listen = [\"0.0.0.0:443\"]"
        ));
    } else {
        vec![DEFAULT_LISTEN.parse().context("default address")?]
    };

    let plugin_path = match (&args.plugin, &cfg.plugin) {
        (Some(p), _) => Some((p.clone(), Origin::Flag("--plugin"))),
        (None, Some(p)) => Some((resolve(p.get_ref()), file_origin("plugin", p.span()))),
        (None, None) => None,
    };
    let app = args.app.or(cfg.app).unwrap_or(App::Page);

    let mut settings = settings.clone();
    if let Some(alpn) = args.alpn_given().or(cfg.alpn.clone()) {
        settings.alpn = alpn;
    } else if plugin_path.is_none() && app == App::Echo {
        settings.alpn = vec!["tq-echo".into()];
    } else if plugin_path.is_none() && app == App::Hq {
        settings.alpn = vec!["hq-interop".into()];
    }
    let www = match (&args.www, &cfg.www) {
        (Some(d), _) => Some((d.clone(), Origin::Flag("--www"))),
        (None, Some(d)) => Some((resolve(d.get_ref()), file_origin("www", d.span()))),
        (None, None) => None,
    };
    let www = match www {
        Some((dir, origin)) => {
            if plugin_path.is_some() {
                bail!(origin.say(format!(
                    "{} is served by the built-in file server, which a plugin replaces: \
                     give --www or a plugin, not both",
                    dir.display()
                )));
            }
            if app == App::Echo {
                bail!(origin.say("the echo serves no files: --www goes with --app page or hq"));
            }
            if !dir.is_dir() {
                bail!(origin.say(format!(
                    "{} is not a directory (--www serves a directory's files)",
                    dir.display()
                )));
            }
            Some(dir)
        }
        None if app == App::Hq && plugin_path.is_none() => bail!(
            "{name}: --app hq serves a directory's files: say which with --www DIR (or `www` in the listener)"
        ),
        None => None,
    };
    let alpn_given = args.alpn_given().is_some() || cfg.alpn.is_some();

    let plugin = match plugin_path {
        None => None,
        Some((path, origin)) => {
            let l = &cfg.limits;
            let d = PluginLimits::default();
            let limits = PluginLimits {
                memory_bytes: args
                    .plugin_memory
                    .or(l.memory_mib)
                    .map_or(d.memory_bytes, |m| m << 20),
                call_deadline: args
                    .plugin_deadline
                    .or(l.deadline)
                    .unwrap_or(d.call_deadline),
                call_timeout: args
                    .plugin_call_timeout
                    .or(l.call_timeout)
                    .unwrap_or(d.call_timeout),
                request_timeout: args
                    .plugin_request_timeout
                    .or(l.request_timeout)
                    .unwrap_or(d.request_timeout),
                reuse_instances: args
                    .reuse_instances
                    .or(l.reuse_instances)
                    .unwrap_or(d.reuse_instances),
                max_instances: match args.plugin_instances.or(l.instances) {
                    Some(0) => bail!(origin.say(format!(
                        "{name}: `instances` must be at least 1 (the plugin could serve nothing)"
                    ))),
                    Some(n) => n,
                    None => d.max_instances,
                },
                component: crate::plugin::ComponentLimits {
                    core_instances: args
                        .plugin_core_instances
                        .or(l.core_instances)
                        .unwrap_or(d.component.core_instances),
                    memories: args
                        .plugin_memories
                        .or(l.memories)
                        .unwrap_or(d.component.memories),
                    tables: args
                        .plugin_tables
                        .or(l.tables)
                        .unwrap_or(d.component.tables),
                    table_elements: args
                        .plugin_table_elements
                        .or(l.table_elements)
                        .unwrap_or(d.component.table_elements),
                },
                cache_dir: args.cache_dir(),
                ..d
            };
            let g = &cfg.grants;
            let mut dirs = args.plugin_dirs.clone();
            if dirs.is_empty() {
                for d in &g.dirs {
                    let grant: DirGrant = d.get_ref().parse().map_err(|e: String| {
                        anyhow::anyhow!(file_origin("grants.dirs", d.span()).say(e))
                    })?;
                    dirs.push(DirGrant {
                        host: resolve(&grant.host),
                        guest: grant.guest,
                    });
                }
            }
            let grants = PluginGrants {
                dirs,
                env: if args.plugin_env.is_empty() {
                    g.env.clone().into_iter().collect()
                } else {
                    args.plugin_env.clone()
                },
                http_hosts: if args.allow_http.is_empty() {
                    g.allow_http.clone()
                } else {
                    args.allow_http.clone()
                },
                http_private: args.allow_http_private || g.allow_http_private,
            };
            let drain = args
                .drain_timeout
                .or(cfg.drain_timeout)
                .unwrap_or(Duration::from_secs(60));
            let reuse = limits.reuse_instances;
            let live = LivePlugin::load_with_metrics(&path, limits, grants, drain, metrics)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        origin.say(format!("cannot load the plugin {}: {e}", path.display()))
                    )
                })?;
            let p = live.current();
            info!(
                listener = %name,
                plugin = %path.display(),
                world = %p.world(),
                sha256 = %p.hash(),
                compile_ms = p.compile_time().as_millis() as u64,
                from_cache = p.compiled() == crate::plugin::Compiled::Cached,
                memory_kib = p.initial_memory_bytes() >> 10,
                "plugin loaded"
            );
            // A fresh instance per request pays for its whole starting
            // memory each time: say so where that is most of the cost.
            if matches!(p.world(), World::WasiHttp | World::WasiHttpService)
                && reuse == 0
                && p.initial_memory_bytes() >= FRESH_MEMORY_HINT
            {
                info!(
                    memory_kib = p.initial_memory_bytes() >> 10,
                    "each request gets a fresh instance that starts with this much memory, \
                     reset after it: a smaller start (a Rust plugin's stack, see the README's \
                     \"Plugin memory\") or --reuse-instances N makes requests cheaper"
                );
            }
            if p.world() == World::QuicApp && !alpn_given {
                bail!(origin.say(format!(
                    "{} is a raw QUIC plugin ({}): say which application protocol its \
                     clients offer with --alpn NAME (e.g. --alpn tq-echo), or `alpn` in \
                     its [[listener]]",
                    path.display(),
                    World::QuicApp
                )));
            }
            Some(PluginPlan {
                live,
                watch: !args.no_watch && cfg.watch.unwrap_or(true),
            })
        }
    };

    // Certificate and key: flags, else the file, else self-signed.
    let tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some((
            (c.clone(), Origin::Flag("--cert")),
            (k.clone(), Origin::Flag("--key")),
        )),
        _ => match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some((
                (resolve(c.get_ref()), file_origin("cert", c.span())),
                (resolve(k.get_ref()), file_origin("key", k.span())),
            )),
            (Some(c), None) => bail!(file_origin("cert", c.span()).say("needs `key` too")),
            (None, Some(k)) => bail!(file_origin("key", k.span()).say("needs `cert` too")),
            (None, None) => None,
        },
    };
    let mut cert_origin = None;
    let tls = match tls {
        Some(((cert, co), (key_path, ko))) => {
            cert_origin = Some(co.clone());
            for (p, o) in [(&cert, &co), (&key_path, &ko)] {
                if let Err(e) = std::fs::metadata(p) {
                    bail!(o.say(format!("cannot read {}: {e}", p.display())));
                }
            }
            TlsCertificatePaths {
                cert,
                key: key_path,
            }
        }
        None if mode == Mode::Check => TlsCertificatePaths {
            cert: PathBuf::new(),
            key: PathBuf::new(),
        },
        None => super::serve::self_signed()?,
    };

    let params = ConnectionParams::new_server(settings, tls);
    if params.settings.alpn.is_empty() {
        bail!("{name}: no ALPN configured");
    }
    // Reads the certificate and key: a bad file is refused here, naming
    // where it was configured.
    let self_signed_later = mode == Mode::Check && cert_origin.is_none();
    if let Err(e) = params.to_quiche_config(!self_signed_later) {
        match cert_origin {
            Some(o) => bail!(o.say(format!("{name}: {e}"))),
            None => bail!("{name}: {e}"),
        }
    }
    Ok(ListenerPlan {
        name,
        listen,
        params,
        app,
        www,
        plugin,
    })
}
