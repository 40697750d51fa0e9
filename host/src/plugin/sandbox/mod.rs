//! The sandbox every world shares: the wasmtime engine of one loaded
//! version with its pooling allocator and epoch ticker ([`Sandbox`]), the
//! operator's limits and grants, what a store holds, and calling into an
//! instance under a CPU deadline, and the compilation cache. Nothing here
//! knows a world.

mod cache;
mod call;
mod engine;
mod limits;
mod output;
mod state;

pub use cache::{default_cache_dir, Compiled};
pub(crate) use call::{
    bounded, call, call_export, instantiate, instantiated, log_final_output, new_store,
    sleep_until, timer_at,
};
pub use limits::{ComponentLimits, DirGrant, PluginGrants, PluginLimits};
pub(crate) use state::PluginState;

pub(crate) use cache::load_or_compile;
pub(crate) use engine::{explain_pool_limit, Sandbox};
