//! Reload test plugin: see `tests/plugins/shared/versioned_h3.rs`.

const VERSION: &str = "b";

include!("../../shared/versioned_h3.rs");
