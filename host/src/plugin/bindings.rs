//! Host bindings generated from `wit/`, one module per world of ours;
//! crate-private, so no raw generated type leaks out of the runtime.

use super::sandbox::PluginState;

pub(crate) mod h3 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "http3-app",
        exports: { default: async },
    });
}

pub(crate) mod quic {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "quic-app",
        exports: { default: async },
        // One Rust type for the shared interface.
        with: { "tq:plugin/types": super::h3::tq::plugin::types },
    });
}

/// `tq:plugin/types` has no functions: every store provides it.
impl<C: Send> h3::tq::plugin::types::Host for PluginState<C> {}
