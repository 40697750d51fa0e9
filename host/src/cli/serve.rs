//! `tq-host serve`: binds every listener's sockets (one per worker), serves
//! them, reloads on SIGHUP, and stops gracefully on SIGTERM or SIGINT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::plan::{self, ListenerPlan};
use super::{App, ServeArgs};
use crate::builtin::{StaticFiles, WelcomePage};
use crate::metrics::{AccessLog, PrometheusMetrics, ServiceMetrics, Tee};
use crate::plugin::{LivePlugin, World};
use crate::quic::{
    self, ConnectionIdGenerator, ServerIdConnectionIdGenerator, SimpleConnectionIdGenerator,
    StatelessResetKey, TlsCertificatePaths, TlsReloader,
};
use crate::server::{serve, PluginSource, ServeOptions, Service};
use crate::tls::SelfSignedCertificate;

/// How often the plugin file is checked for changes.
const WATCH_POLL: Duration = Duration::from_millis(200);

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Signals are taken over first: SIGHUP's default action would end the
    // process while plugins compile (and systemd would not restart it),
    // and a SIGTERM then should still stop it cleanly.
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let metrics = PrometheusMetrics::new();
    let sink: Arc<dyn ServiceMetrics> = if args.no_access_log {
        Arc::new(metrics.clone())
    } else {
        Arc::new(Tee(vec![Arc::new(metrics.clone()), Arc::new(AccessLog)]))
    };
    let admin_token = match &args.admin {
        Some(addr) => super::admin::token(*addr, args.admin_token_file.as_deref())?,
        None => None,
    };
    let workers = args.workers.unwrap_or_else(quic::default_workers);
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let cids = cid_generator(&args)?;

    // Check everything (certificates, plugins) before binding anything.
    let plan = plan::build(&args, sink.clone(), plan::Mode::Serve).await?;

    // Bind every listener's sockets.
    let mut bound = Vec::new();
    for l in plan.listeners {
        let mut sockets = Vec::new();
        for addr in &l.listen {
            sockets.extend(quic::bind_workers(*addr, workers)?);
        }
        let listener =
            quic::listen_with_generator(sockets, l.params.clone(), cids.clone(), metrics.clone())
                .with_context(|| format!("cannot start the QUIC listener {}", l.name))?;
        announce(&l, &listener, workers);
        bound.push((l, listener));
    }

    let reloader = Reloader {
        plugins: bound
            .iter()
            .filter_map(|(l, _)| l.plugin.as_ref().map(|p| (l.name.clone(), p.live.clone())))
            .collect(),
        certificates: bound
            .iter()
            .filter(|(l, _)| l.params.tls.is_some())
            .map(|(l, listener)| (l.name.clone(), listener.tls_reloader()))
            .collect(),
    };
    // Every listener is bound and its routers run: connections are
    // accepted from here on (they wait in the backlog until served).
    let ready = Arc::new(AtomicBool::new(true));

    // Reload triggers (SIGHUP, the files changing, the admin endpoint) and
    // the admin endpoint live as long as the server.
    let mut triggers = JoinSet::new();
    let r = reloader.clone();
    triggers.spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading certificates and plugins");
            // Errors are logged where they happen.
            r.reload_all().await;
        }
    });
    for (l, _) in &bound {
        if let Some(p) = l.plugin.as_ref().filter(|p| p.watch) {
            triggers.spawn(p.live.clone().watch_file(WATCH_POLL));
            info!(listener = %l.name, file = %p.live.path().display(), "watching the plugin file for changes");
        }
    }
    // The admin endpoint outlives the reload triggers: it answers
    // /readyz with 503 while connections drain.
    let mut admin_task = JoinSet::new();
    if let Some(addr) = args.admin {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the admin endpoint to {addr}"))?;
        info!(
            admin = %l.local_addr().unwrap_or(addr),
            token = admin_token.is_some(),
            "admin endpoint: GET /healthz, /readyz, /metrics, /versions; POST /reload"
        );
        let state = Arc::new(super::admin::AdminState {
            plugins: reloader.plugins.clone(),
            reloader: reloader.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            token: admin_token.clone(),
        });
        admin_task.spawn(super::admin::serve(l, state));
    }

    let grace = args.shutdown_timeout;
    // SIGTERM or SIGINT starts a graceful stop; a second one ends the
    // process at once.
    let (stop_tx, stop_rx) = watch::channel(false);
    let not_ready = ready.clone();
    let signals = tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        not_ready.store(false, Ordering::Relaxed);
        info!(
            signal = name,
            timeout = ?grace,
            "stopping: no new connections; live ones get GOAWAY and up to the shutdown timeout to finish"
        );
        stop_tx.send_replace(true);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        warn!("second stop signal: exiting now, without waiting for connections");
        std::process::exit(130);
    });

    let mut servers = JoinSet::new();
    for (l, listener) in bound {
        let service = match l.plugin {
            Some(p) => Service::Plugin(PluginSource::Live(p.live)),
            None if l.app == App::Echo => Service::Echo,
            None if l.app == App::Hq => match l.www {
                Some(dir) => Service::Hq(dir),
                None => anyhow::bail!("{}: --app hq needs --www", l.name),
            },
            None => Service::Http3(Arc::new(match l.www {
                Some(dir) => Site::Files(StaticFiles::new(dir)),
                None => Site::Welcome(WelcomePage),
            })),
        };
        let options = ServeOptions {
            http3: plan.http3.clone(),
            grace,
            metrics: sink.clone(),
        };
        let mut stop = stop_rx.clone();
        let name = l.name;
        servers.spawn(async move {
            let stopped = serve(listener, service, options, async move {
                // A dropped sender means no stop will come.
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await;
            (name, stopped)
        });
    }
    // Reload triggers stop with the signal, so no version is swapped in
    // while connections drain.
    let mut stop = stop_rx.clone();
    let started_stop = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(started_stop);
    let mut stopped_at = None;
    loop {
        tokio::select! {
            () = &mut started_stop, if stopped_at.is_none() => {
                stopped_at = Some(Instant::now());
                triggers.abort_all();
            }
            done = servers.join_next() => match done {
                Some(Ok((name, stopped))) => {
                    if !stopped.drained {
                        warn!(listener = %name, timeout = ?grace, "connections still open at the shutdown timeout were closed");
                    }
                }
                Some(Err(e)) => warn!(error = %e, "a listener's task failed"),
                None => break,
            },
        }
    }
    signals.abort();
    info!(
        drained_in = ?stopped_at.map(|t| t.elapsed()),
        "stopped"
    );
    Ok(())
}

/// What a listener without a plugin serves over HTTP/3.
enum Site {
    Welcome(WelcomePage),
    Files(StaticFiles),
}

impl crate::http3::RequestHandler for Site {
    async fn handle(
        &self,
        req: http::Request<crate::http3::RequestBody>,
    ) -> http::Response<crate::http3::ResponseBody> {
        match self {
            Site::Welcome(p) => p.handle(req).await,
            Site::Files(f) => f.handle(req).await,
        }
    }
}

/// Logs where a listener listens and how to try it.
fn announce<M: crate::metrics::Metrics>(
    l: &ListenerPlan,
    listener: &quic::Listener<M>,
    workers: usize,
) {
    let app = match (&l.plugin, &l.www) {
        (Some(p), _) => p.live.path().display().to_string(),
        (None, Some(dir)) => format!("{:?} {}", l.app, dir.display()),
        (None, None) => format!("{:?}", l.app),
    };
    let mut addrs: Vec<_> = listener.local_addrs().to_vec();
    addrs.dedup();
    for a in &addrs {
        info!(listener = %l.name, addr = %a, app = %app, alpn = ?l.params.settings.alpn, retry = l.params.settings.enable_retry, workers, "listening");
    }
    if let Some(a) = addrs.first() {
        match l.plugin.as_ref().map(|p| p.live.current().world()) {
            Some(World::QuicApp) => info!(
                "try: tq-host echo -k --alpn {} {a}",
                l.params.settings.alpn.first().map_or("", String::as_str)
            ),
            _ if l.app == App::Page || l.plugin.is_some() => {
                info!("try: tq-host get -k https://{a}/")
            }
            _ if l.app == App::Hq => {
                info!("serving HTTP/0.9 (hq-interop): a client sends `GET /path` on a stream")
            }
            _ => info!("try: tq-host echo -k {a}"),
        }
    }
}

/// The connection-id generator `--server-id` and
/// `--stateless-reset-key-file` ask for.
fn cid_generator(args: &ServeArgs) -> anyhow::Result<Arc<dyn ConnectionIdGenerator>> {
    let key = match &args.stateless_reset_key_file {
        Some(f) => Some(StatelessResetKey::from_file(f).map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok(match &args.server_id {
        Some(hex) => {
            let id = crate::quic::decode_hex(hex.trim()).with_context(|| {
                format!("--server-id {hex}: expected 1 to 15 bytes in hex, e.g. 0a01")
            })?;
            let g = ServerIdConnectionIdGenerator::new(id, 0)
                .map_err(|e| anyhow::anyhow!("--server-id {hex}: {e}"))?;
            info!(server_id = %hex, len = g.connection_id_len(), "connection ids carry the server id (QUIC-LB plaintext)");
            match key {
                Some(k) => Arc::new(g.with_reset_key(k)),
                None => Arc::new(g),
            }
        }
        None => match key {
            Some(k) => Arc::new(SimpleConnectionIdGenerator::default().with_reset_key(k)),
            None => Arc::new(SimpleConnectionIdGenerator::default()),
        },
    })
}

/// What SIGHUP and `POST /reload` reload: every listener's certificate
/// and plugin.
#[derive(Clone)]
pub(super) struct Reloader {
    pub(super) plugins: Vec<(String, LivePlugin)>,
    certificates: Vec<(String, TlsReloader)>,
}

impl Reloader {
    /// Reloads every certificate; the errors, if any, as one message.
    pub(super) fn reload_certificates(&self) -> Option<String> {
        let mut errors = Vec::new();
        for (name, tls) in &self.certificates {
            match tls.reload() {
                Ok(()) => info!(listener = %name, "certificate reloaded for new connections"),
                Err(e) => {
                    warn!(listener = %name, error = %e, "certificate reload refused; the running one stays");
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        (!errors.is_empty()).then(|| errors.join("; "))
    }

    /// Reloads certificates and plugins (errors are logged).
    async fn reload_all(&self) {
        let _ = self.reload_certificates();
        for (_, live) in &self.plugins {
            let _ = live.reload().await;
        }
    }
}

pub(super) fn self_signed() -> anyhow::Result<TlsCertificatePaths> {
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
