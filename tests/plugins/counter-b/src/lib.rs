//! Reload test plugin: see `tests/plugins/shared/counter_quic.rs`.

const VERSION: &str = "b";

include!("../../shared/counter_quic.rs");
