//! `tq-host serve`: binds the sockets and serves the built-in application.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tracing::{info, warn};

use std::sync::Arc;

use super::config::ConfigFile;
use super::{App, ServeArgs};
use crate::builtin::WelcomePage;
use crate::metrics::DefaultMetrics;
use crate::plugin::{LivePlugin, PluginGrants, PluginLimits, World};
use crate::quic::{self, ConnectionParams, TlsCertificatePaths};
use crate::server::{serve, PluginSource, ServeOptions, Service};
use crate::tls::SelfSignedCertificate;

/// How often the plugin file is checked for changes.
const WATCH_POLL: Duration = Duration::from_millis(200);

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let mut settings = file.quic;
    let h3_settings = file.http3;
    if args.plugin.is_none()
        && args.app == App::Echo
        && settings.alpn == crate::quic::QuicSettings::default().alpn
    {
        settings.alpn = vec!["tq-echo".into()];
    }
    if !args.alpn.is_empty() {
        settings.alpn = args.alpn.clone();
    }
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

    let admin_token = match &args.admin {
        Some(addr) => super::admin::token(*addr, args.admin_token_file.as_deref())?,
        None => None,
    };

    // Load and validate the plugin before binding anything.
    let plugin = match &args.plugin {
        Some(path) => {
            let limits = PluginLimits {
                memory_bytes: args.plugin_memory << 20,
                call_deadline: args.plugin_deadline,
                call_timeout: args.plugin_call_timeout,
                request_timeout: args.plugin_request_timeout,
                reuse_instances: args.reuse_instances,
                ..PluginLimits::default()
            };
            let grants = PluginGrants {
                dirs: args.plugin_dirs.clone(),
                env: args.plugin_env.clone(),
                http_hosts: args.allow_http.clone(),
                http_private: args.allow_http_private,
            };
            let live = LivePlugin::load(path, limits, grants, args.drain_timeout)
                .await
                .context("cannot load the plugin")?;
            let p = live.current();
            info!(plugin = %path.display(), world = %p.world(), sha256 = %p.hash(), "plugin loaded");
            if p.world() == World::QuicApp
                && args.alpn.is_empty()
                && settings.alpn == crate::quic::QuicSettings::default().alpn
            {
                bail!(
                    "{} is a raw QUIC plugin ({}): say which application protocol its \
                     clients offer with --alpn NAME (e.g. --alpn tq-echo), or `alpn` under \
                     [quic] in --config",
                    path.display(),
                    World::QuicApp
                );
            }
            Some(live)
        }
        None => None,
    };
    // Reload triggers: SIGHUP, the file changing, the admin endpoint. They
    // live as long as the server.
    let mut triggers = JoinSet::new();
    if let Some(live) = &plugin {
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        let l = live.clone();
        triggers.spawn(async move {
            while hup.recv().await.is_some() {
                info!("SIGHUP: reloading the plugin");
                // Errors are logged by `reload`.
                let _ = l.reload().await;
            }
        });
        if !args.no_watch {
            triggers.spawn(live.clone().watch_file(WATCH_POLL));
            info!(file = %live.path().display(), "watching the plugin file for changes");
        }
        if let Some(addr) = args.admin {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the admin endpoint to {addr}"))?;
            info!(admin = %l.local_addr().unwrap_or(addr), token = admin_token.is_some(), "admin endpoint: GET /versions, POST /reload");
            triggers.spawn(super::admin::serve(l, live.clone(), admin_token.clone()));
        }
    } else if args.admin.is_some() {
        bail!("--admin needs --plugin: it manages the plugin's versions");
    }

    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => TlsCertificatePaths {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => self_signed()?,
    };
    let params = ConnectionParams::new_server(settings, tls);
    // Validate the whole configuration before binding anything.
    params.settings.alpn.first().context("no ALPN configured")?;

    let mut sockets = Vec::new();
    for addr in &args.listen {
        let s = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("cannot bind UDP {addr}"))?;
        sockets.push(s);
    }
    let metrics = DefaultMetrics::default();
    let listener = quic::listen(sockets, params.clone(), metrics.clone())
        .context("cannot start the QUIC listener")?;
    for a in listener.local_addrs() {
        info!(addr = %a, app = %args.plugin.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("{:?}", args.app)), alpn = ?params.settings.alpn, retry = params.settings.enable_retry, "listening");
    }
    if let Some(a) = listener.local_addrs().first() {
        match plugin.as_ref().map(|l| l.current().world()) {
            Some(World::QuicApp) => info!(
                "try: tq-host echo -k --alpn {} {a}",
                params.settings.alpn.first().map_or("", String::as_str)
            ),
            _ if args.app == App::Page || plugin.is_some() => {
                info!("try: tq-host get -k https://{a}/")
            }
            _ => info!("try: tq-host echo -k {a}"),
        }
    }
    let service = match plugin {
        Some(live) => Service::Plugin(PluginSource::Live(live)),
        None if args.app == App::Echo => Service::Echo,
        None => Service::Http3(Arc::new(WelcomePage)),
    };
    let grace = args.shutdown_timeout;
    let options = ServeOptions {
        http3: h3_settings,
        grace,
    };
    // SIGTERM or SIGINT starts a graceful stop; a second one ends the
    // process at once.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let (first, first_signal) = tokio::sync::oneshot::channel();
    let signals = tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = first.send(name);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        warn!("second stop signal: exiting now, without waiting for connections");
        std::process::exit(130);
    });
    // Reload triggers stop with the signal, so no version is swapped in
    // while connections drain.
    let stop = async move {
        match first_signal.await {
            Ok(name) => info!(
                signal = name,
                timeout = ?grace,
                "stopping: no new connections; live ones get GOAWAY and up to the shutdown timeout to finish"
            ),
            Err(_) => std::future::pending().await,
        }
        triggers.abort_all();
    };
    let stopped = serve(listener, service, options, stop).await;
    signals.abort();
    if !stopped.drained {
        warn!(timeout = ?grace, "connections still open at the shutdown timeout were closed");
    }
    info!(metrics = ?metrics.snapshot(), "stopped");
    Ok(())
}

fn self_signed() -> anyhow::Result<TlsCertificatePaths> {
    let cert = SelfSignedCertificate::generate(&["localhost", "127.0.0.1", "::1"])?;
    let dir = private_temp_dir()?;
    let paths = cert
        .write_to(&dir)
        .with_context(|| format!("cannot write self-signed certificate to {}", dir.display()))?;
    info!(
        cert = %paths.cert.display(),
        sha256 = %cert.fingerprint(),
        "no --cert given: made a self-signed certificate for localhost, 127.0.0.1 and ::1. \
         Clients must trust this file as a CA (e.g. `tq-host echo --ca {}`) or skip verification (`--insecure`)",
        paths.cert.display()
    );
    Ok(paths)
}

/// A new directory under the system's temporary one, with an unguessable
/// name and only the owner allowed in: a predictable path (the process id)
/// let another local user create it first, or a link in its place, and so
/// read or swap the private key.
fn private_temp_dir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut random = [0u8; 12];
    boring::rand::rand_bytes(&mut random).context("cannot draw random bytes")?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("tq-host-{name}"));
    // `create` (not `create_all`) fails if anything is already there.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_directory_is_new_unguessable_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let a = private_temp_dir().unwrap();
        let b = private_temp_dir().unwrap();
        assert_ne!(a, b);
        let mode = std::fs::metadata(&a).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        let _ = std::fs::remove_dir(a);
        let _ = std::fs::remove_dir(b);
    }
}
