//! Reload test plugin: see `tests/plugins/shared/counter_quic.rs`.

const VERSION: &str = "a";

include!("../../shared/counter_quic.rs");
