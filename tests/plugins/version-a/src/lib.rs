//! Reload test plugin: see `tests/plugins/shared/versioned_h3.rs`.

const VERSION: &str = "a";

include!("../../shared/versioned_h3.rs");
