//! The TOML configuration file (`--config FILE`, `tq-host check FILE`).
//!
//! ```toml
//! [quic]                      # transport settings of every listener
//! max_idle_timeout = "10s"
//!
//! [http3]                     # HTTP/3 settings of every listener
//! stream_stall_timeout = "30s"
//!
//! [[listener]]                # one per service; flags win when there is one
//! name = "site"
//! listen = ["0.0.0.0:443"]
//! cert = "/etc/tq-host/cert.pem"
//! key = "/etc/tq-host/key.pem"
//! plugin = "/srv/tq-host/site.wasm"
//! [listener.limits]
//! memory_mib = 128
//! [listener.grants]
//! allow_http = ["api.example.com"]
//! ```
//!
//! Every key of [`QuicSettings`](crate::quic::QuicSettings) may appear under
//! `[quic]`, and of [`Http3Settings`](crate::http3::Http3Settings) under
//! `[http3]`; unknown keys are refused, so a typo is an error, not a silently
//! ignored setting. Relative paths are relative to the file's directory.
//! Every error names the file, the line and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::quic::QuicSettings;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) quic: QuicSettings,
    #[serde(default)]
    pub(crate) http3: crate::http3::Http3Settings,
    #[serde(default)]
    pub(crate) listener: Vec<ListenerConfig>,
}

/// One `[[listener]]`: its sockets, certificate, protocol and what it
/// serves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    /// A name for logs and `/versions`, unique among the listeners;
    /// default `listener[N]`. With `--session-ticket-key-file` it also
    /// picks the listener's ticket keys: renaming (or reordering unnamed
    /// listeners) ends the sessions clients keep, and hosts of a fleet must
    /// name their listeners alike.
    pub(crate) name: Option<String>,
    /// Addresses to listen on (UDP).
    pub(crate) listen: Option<Spanned<Vec<SocketAddr>>>,
    pub(crate) cert: Option<Spanned<PathBuf>>,
    pub(crate) key: Option<Spanned<PathBuf>>,
    pub(crate) alpn: Option<Vec<String>>,
    /// `page`, `echo` or `hq`, when no plugin is given.
    pub(crate) app: Option<super::App>,
    /// A directory whose files `page` (HTTP/3) or `hq` (HTTP/0.9) serves.
    pub(crate) www: Option<Spanned<PathBuf>>,
    pub(crate) plugin: Option<Spanned<PathBuf>>,
    /// Reload the plugin when its file changes. Default: true.
    pub(crate) watch: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) drain_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
    #[serde(default)]
    pub(crate) grants: GrantsConfig,
}

/// `[listener.limits]`: the plugin's sandbox (see `tq-host --help`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    pub(crate) memory_mib: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) call_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) reuse_instances: Option<u32>,
    pub(crate) instances: Option<u32>,
    pub(crate) core_instances: Option<u32>,
    pub(crate) memories: Option<u32>,
    pub(crate) tables: Option<u32>,
    pub(crate) table_elements: Option<usize>,
}

/// `[listener.grants]`: what the plugin may reach.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantsConfig {
    /// `HOST` or `HOST::GUEST`, read-only.
    #[serde(default)]
    pub(crate) dirs: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) allow_http: Vec<String>,
    #[serde(default)]
    pub(crate) allow_http_private: bool,
}

/// A loaded file: its settings, and what is needed to point at a line.
pub(crate) struct Loaded {
    pub(crate) file: ConfigFile,
    pub(crate) source: Source,
}

/// The file's path and text, to turn byte offsets into `file:line`.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    text: String,
}

impl Source {
    /// `FILE:LINE` for a byte offset.
    pub(crate) fn at(&self, offset: usize) -> String {
        let line = self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1;
        format!("{}:{line}", self.path.display())
    }

    /// `FILE:LINE: KEY: message`.
    pub(crate) fn error<T>(&self, span: std::ops::Range<usize>, key: &str, msg: T) -> String
    where
        T: std::fmt::Display,
    {
        format!("{}: {key}: {msg}", self.at(span.start))
    }

    /// A path from the file, relative to the file's directory.
    pub(crate) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path
                .parent()
                .map_or_else(|| p.to_owned(), |d| d.join(p))
        }
    }
}

impl ConfigFile {
    /// Reads and parses `path`. The error names the file, line and key.
    pub(crate) fn load(path: &Path) -> Result<Loaded, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let source = Source {
            path: path.to_owned(),
            text,
        };
        let file = Self::parse(&source)?;
        Ok(Loaded { file, source })
    }

    fn parse(source: &Source) -> Result<Self, String> {
        toml::from_str(&source.text).map_err(|e| {
            let at = e
                .span()
                .map_or_else(|| source.path.display().to_string(), |s| source.at(s.start));
            // toml's message is one line: "unknown field `x`, expected ...".
            format!("{at}: {}", e.message().trim())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(&Source {
            path: "tq.toml".into(),
            text: text.into(),
        })
    }

    #[test]
    fn typos_are_errors_with_the_line_and_key_named() {
        let err = parse("[quic]\n\nidle_timeout = \"1s\"\n").unwrap_err();
        assert!(
            err.starts_with("tq.toml:3:") && err.contains("idle_timeout"),
            "{err}"
        );
        let err =
            parse("[[listener]]\nlisten = [\"127.0.0.1:1\"]\nplugn = \"a.wasm\"\n").unwrap_err();
        assert!(
            err.starts_with("tq.toml:3:") && err.contains("plugn"),
            "{err}"
        );
    }

    #[test]
    fn listeners_and_sections_are_read() {
        let c = parse(
            "[quic]\nenable_retry = false\n[[listener]]\nlisten = [\"127.0.0.1:1\"]\n\
             [listener.limits]\nmemory_mib = 8\n[[listener]]\nlisten = [\"127.0.0.1:2\"]\n\
             app = \"echo\"\n[listener.grants]\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        assert!(!c.quic.enable_retry);
        assert_eq!(c.listener.len(), 2);
        assert_eq!(c.listener[0].limits.memory_mib, Some(8));
        assert_eq!(c.listener[1].app, Some(crate::cli::App::Echo));
        assert_eq!(c.listener[1].grants.env["A"], "1");
    }
}
