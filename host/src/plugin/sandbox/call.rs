//! Making a sandboxed store for one instance, and calling into it: a fresh
//! CPU deadline per call, the plugin's output logged after each call, and a
//! one-line reason when a call fails.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use wasmtime::component::{ComponentNamedList, Instance, InstancePre, Lift, Lower};

use super::engine::Sandbox;
use super::state::PluginState;
use crate::metrics::{CallKind, CallOutcome};

/// A store for one instance, with its limits, deadline callback and WASI
/// context (nothing granted but the operator's grants).
pub(crate) fn new_store<C: Send>(
    plugin: &Sandbox,
    conn: C,
) -> anyhow::Result<Store<PluginState<C>>> {
    let output = super::output::OutputCapture::new(plugin.limits.output_bytes);
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(output.clone()).stderr(output.clone());
    for (k, v) in &plugin.grants.env {
        wasi.env(k, v);
    }
    for d in &plugin.grants.dirs {
        wasi.preopened_dir(&d.host, &d.guest, FsPerms::ReadOnly)
            .map_err(|e| anyhow::anyhow!("cannot grant {}: {e:?}", d.host.display()))?;
    }
    let state = PluginState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new()
            .memory_size(plugin.limits.memory_bytes)
            .instances(64)
            .trap_on_grow_failure(true)
            .build(),
        established: Instant::now(),
        call_ticks: 0,
        call_deadline: plugin.limits.call_deadline,
        call_timeout: plugin.limits.call_timeout,
        output,
        metrics: plugin.metrics.clone(),
        version: plugin.version_label.clone(),
        conn,
    };
    state.metrics.plugin_instances(&state.version, 1);
    let mut store = Store::new(&plugin.engine, state);
    store.limiter(|s| &mut s.limits);
    // Each tick that finds guest code running counts against the call's
    // CPU deadline: past it, trap; otherwise yield to the runtime so other
    // connections run, and check again next tick. Time the guest spends
    // waiting in the host (a wasi:http body stream, say) does not count.
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        s.call_ticks += 1;
        if s.past_deadline() {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    Ok(store)
}

/// The future of one call into the plugin.
pub(crate) type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// Calls into the plugin with a fresh CPU deadline; logs what it printed and,
/// on failure, why (trap, panic, deadline, memory). The error is that
/// one-line reason.
///
/// A call that overruns its wall-clock limit is dropped midway: an
/// instance whose call failed in any way must not be called again (every
/// caller treats an error as the instance's end).
pub(crate) async fn call<C: Send, A, R>(
    store: &mut Store<PluginState<C>>,
    app: &A,
    f: impl for<'a> FnOnce(&'a mut Store<PluginState<C>>, &'a A) -> CallFuture<'a, R>,
) -> Result<R, String> {
    let limit = store.data().call_timeout;
    bounded(store, app, limit, CallKind::Hook, f)
        .await
        .inspect_err(|why| warn!(error = %why, "plugin failed; closing its connection"))
}

/// Runs `f` on the instance (with `with`, what the call also borrows) as
/// one unit of work of `kind`: a fresh CPU budget, at most `limit` of
/// wall-clock time, what it printed logged afterwards. The error is a
/// one-line reason. Every call into an instance goes through here.
pub(crate) async fn bounded<C: Send, W: ?Sized, R>(
    store: &mut Store<PluginState<C>>,
    with: &W,
    limit: std::time::Duration,
    kind: CallKind,
    f: impl for<'a> FnOnce(&'a mut Store<PluginState<C>>, &'a W) -> CallFuture<'a, R>,
) -> Result<R, String> {
    store.data_mut().start_call();
    store.set_epoch_deadline(1);
    // One clock read for both the start and the wall-clock limit: a call
    // is made once or twice per request, and each read counts.
    let started = tokio::time::Instant::now();
    let fut = f(store, with);
    let res = match started.checked_add(limit) {
        Some(at) => tokio::time::timeout_at(at, fut).await,
        // A limit past the clock's range is no limit.
        None => Ok(fut.await),
    };
    log_output(store);
    let (out, outcome) = match res {
        Ok(Ok(r)) => (Ok(r), CallOutcome::Ok),
        Ok(Err(e)) => (Err(failure(store.data(), &e)), classify(store.data(), &e)),
        Err(_) => (
            Err(format!(
                "exceeded its wall-clock limit of {limit:?} for {}",
                match kind {
                    CallKind::Request => "one request",
                    _ => "one call",
                }
            )),
            CallOutcome::Timeout,
        ),
    };
    let s = store.data();
    s.metrics
        .plugin_call(&s.version, kind, started.elapsed(), outcome);
    out
}

/// What kind of failure ended a call, for the metrics.
fn classify<C>(s: &PluginState<C>, e: &wasmtime::Error) -> CallOutcome {
    if s.past_deadline() {
        return CallOutcome::Deadline;
    }
    // The store's limiter turns a refused memory.grow into this error
    // (`trap_on_grow_failure`).
    let root = e.root_cause().to_string();
    if root.contains("growing memory")
        || root.contains("memory") && e.downcast_ref::<wasmtime::Trap>().is_none()
    {
        return CallOutcome::Memory;
    }
    CallOutcome::Trap
}

/// Why a call failed, knowing whether its CPU deadline passed.
fn failure<C>(s: &PluginState<C>, e: &wasmtime::Error) -> String {
    if s.past_deadline() {
        format!("exceeded its CPU deadline of {:?}", s.call_deadline)
    } else {
        describe(e)
    }
}

/// One line on why a call failed: the trap (a Rust panic shows as
/// `unreachable`), or the innermost error (a memory limit), without the
/// multi-line wasm backtrace.
pub(crate) fn describe(e: &wasmtime::Error) -> String {
    let first = |s: String| s.lines().next().unwrap_or_default().to_owned();
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "trapped: wasm `unreachable` executed (a panic or abort in the plugin)".into()
        }
        Some(t) => format!("trapped: {}", first(t.to_string())),
        None => first(e.root_cause().to_string()),
    }
}

/// Logs, line by line, what the plugin printed since the last call (whole
/// lines; a partial last line waits for the next call).
pub(crate) fn log_output<C>(store: &mut Store<PluginState<C>>) {
    emit(store.data().output.take());
}

/// Logs everything the plugin printed, partial last line included: the
/// instance is done.
pub(crate) fn log_final_output<C>(store: &mut Store<PluginState<C>>) {
    emit(store.data().output.take_all());
}

fn emit(taken: super::output::Taken) {
    if taken.dropped > 0 {
        warn!(
            target: "tq_host::plugin::output",
            dropped_bytes = taken.dropped,
            "the plugin printed faster than its output window; older output was dropped"
        );
    }
    if !taken.text.is_empty() {
        for line in String::from_utf8_lossy(&taken.text).lines() {
            info!(target: "tq_host::plugin::output", "{line}");
        }
    }
}

/// The shortest time between two `timer` events of one connection.
const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// When a plugin's `wait-for-data` deadline (milliseconds since
/// `established`) fires: not before [`TIMER_GRANULARITY`] after the last
/// timer, so a plugin that asks to be woken "now" every time gets a tick,
/// not a busy loop.
pub(crate) fn timer_at(
    established: Instant,
    deadline_ms: Option<u64>,
    last_timer: Option<Instant>,
) -> Option<Instant> {
    let at = established.checked_add(Duration::from_millis(deadline_ms?))?;
    Some(last_timer.map_or(at, |t| at.max(t + TIMER_GRANULARITY)))
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Calls `func` of the exported interface `iface` if the instance exports
/// it (`None` if not), with a fresh CPU deadline; `kind` labels it in the
/// metrics. The error is a one-line reason.
pub(crate) async fn call_export<C, P, R>(
    store: &mut Store<PluginState<C>>,
    instance: &Instance,
    kind: CallKind,
    iface: &str,
    func: &str,
    params: P,
) -> Option<Result<R, String>>
where
    C: Send,
    P: ComponentNamedList + Lower + Send + Sync,
    R: Lift + Send + Sync + 'static,
    (R,): ComponentNamedList + Lift + Send + Sync,
{
    let i = instance.get_export_index(&mut *store, None, iface)?;
    let f = instance.get_export_index(&mut *store, Some(&i), func)?;
    let typed = match instance.get_typed_func::<P, (R,)>(&mut *store, &f) {
        Ok(t) => t,
        Err(e) => return Some(Err(format!("{iface}#{func} has the wrong type: {e}"))),
    };
    let limit = store.data().call_timeout;
    Some(
        bounded(store, &typed, limit, kind, |s, typed| {
            Box::pin(async move { typed.call_async(s, params).await.map(|(r,)| r) })
        })
        .await,
    )
}

/// Reports an instantiation made inside a larger call (a fresh wasi:http
/// instance, made within its request's budget) as a call of its own,
/// failed or not.
pub(crate) fn instantiated<C, T>(
    s: &PluginState<C>,
    began: std::time::Instant,
    result: &wasmtime::Result<T>,
) {
    let outcome = match result {
        Ok(_) => CallOutcome::Ok,
        Err(e) => classify(s, e),
    };
    s.metrics
        .plugin_call(&s.version, CallKind::Instantiate, began.elapsed(), outcome);
}

/// Instantiates with a fresh CPU deadline.
pub(crate) async fn instantiate<C: Send>(
    pre: &InstancePre<PluginState<C>>,
    store: &mut Store<PluginState<C>>,
) -> anyhow::Result<Instance> {
    let limit = store.data().call_timeout;
    bounded(store, pre, limit, CallKind::Instantiate, |s, pre| {
        Box::pin(pre.instantiate_async(s))
    })
    .await
    .map_err(|why| {
        let hint = super::engine::pool_hint(&why);
        anyhow::anyhow!("instantiating it failed: {why}{hint}")
    })
}
