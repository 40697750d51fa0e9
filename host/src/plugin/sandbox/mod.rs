//! The sandbox every world shares: the wasmtime engine of one loaded
//! version with its pooling allocator and epoch ticker ([`Sandbox`]), the
//! operator's limits and grants, what a store holds, and calling into an
//! instance under a CPU deadline. Nothing here knows a world.

mod call;
mod engine;
mod limits;
mod state;

pub(crate) use call::{
    call, call_export, describe, instantiate, log_output, new_store, sleep_until,
};
pub use limits::{DirGrant, PluginGrants, PluginLimits};
pub(crate) use state::PluginState;

use wasmtime::Engine;

use engine::{build_engine, EpochTicker};

/// One loaded version's engine and sandbox settings. Every version has its
/// own: a version's pooling allocator reserves its instances' memory up
/// front, and it must be released as a whole when the version is dropped
/// after a reload; one shared engine would keep every version's slots for
/// the life of the process and make the limits a global setting.
pub(crate) struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) limits: PluginLimits,
    pub(crate) grants: PluginGrants,
    _ticker: EpochTicker,
}

impl Sandbox {
    /// An engine sized by `limits`, with its epoch ticker running.
    pub(crate) fn new(limits: PluginLimits, grants: PluginGrants) -> anyhow::Result<Self> {
        let engine = build_engine(&limits)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            limits,
            grants,
            _ticker: ticker,
        })
    }
}
