//! The optional TOML configuration file.
//!
//! ```toml
//! [quic]
//! max_idle_timeout = "10s"
//! initial_max_streams_bidi = 200
//! enable_retry = false
//! ```
//!
//! Every key of [`QuicSettings`](crate::quic::QuicSettings) may appear under
//! `[quic]`, and of [`Http3Settings`](crate::http3::Http3Settings) under
//! `[http3]`; unknown keys are refused, so a typo is an error, not a silently
//! ignored setting.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::quic::QuicSettings;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) quic: QuicSettings,
    #[serde(default)]
    pub(crate) http3: crate::http3::Http3Settings,
}

impl ConfigFile {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_errors_with_the_key_named() {
        let err = toml::from_str::<ConfigFile>("[quic]\nidle_timeout = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("idle_timeout"), "{err}");
    }

    #[test]
    fn quic_section_is_read() {
        let c: ConfigFile = toml::from_str("[quic]\nenable_retry = false\n").unwrap();
        assert!(!c.quic.enable_retry);
    }
}
