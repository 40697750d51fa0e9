//! The worlds tq-host serves, how a component's exports tell which one it
//! implements, and what every world is told about its connection.

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum World {
    /// `tq:plugin/http3-app`: the plugin answers HTTP/3 requests.
    Http3App,
    /// `tq:plugin/quic-app`: the plugin is a raw QUIC connection's
    /// application.
    QuicApp,
    /// The standard `wasi:http/proxy` world (0.2.x): the plugin exports
    /// `wasi:http/incoming-handler` and is served over HTTP/3, one instance
    /// per request.
    WasiHttp,
    /// The standard WASI 0.3 `wasi:http/service` world (async: `handle` is
    /// an `async func`, bodies are streams): the plugin exports
    /// `wasi:http/handler@0.3.x` and is served over HTTP/3, one instance
    /// per request, on an engine with the component model's concurrency.
    WasiHttpService,
}

/// What the host tells a plugin about its connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMeta {
    /// Negotiated ALPN.
    pub alpn: String,
    /// SNI, if any.
    pub server_name: Option<String>,
    /// Peer address.
    pub peer: String,
}

/// The optional exports, by name.
pub(crate) const INIT_EXPORT: &str = "tq:plugin/init@0.1.0";
pub(crate) const MIGRATE_EXPORT: &str = "tq:plugin/migrate@0.1.0";

impl World {
    /// Every world tq-host serves.
    pub const ALL: [World; 4] = [
        World::Http3App,
        World::QuicApp,
        World::WasiHttp,
        World::WasiHttpService,
    ];

    /// The interface a component of this world exports.
    pub fn export(self) -> &'static str {
        match self {
            World::Http3App => "tq:plugin/h3-handler@0.1.0",
            World::QuicApp => "tq:plugin/quic-handler@0.1.0",
            World::WasiHttp => "wasi:http/incoming-handler@0.2.x",
            World::WasiHttpService => "wasi:http/handler@0.3.x",
        }
    }

    /// What metrics and logs call it.
    pub(crate) fn short_name(self) -> &'static str {
        match self {
            World::Http3App => "http3-app",
            World::QuicApp => "quic-app",
            World::WasiHttp => "wasi-http",
            World::WasiHttpService => "wasi-http-0.3",
        }
    }

    /// Whether a component exporting `name` implements this world.
    fn exported_by(self, name: &str) -> bool {
        match self {
            World::WasiHttp => name.starts_with("wasi:http/incoming-handler@0.2."),
            World::WasiHttpService => name.starts_with("wasi:http/handler@0.3."),
            w => name == w.export(),
        }
    }

    /// The world a component with these exports implements, if any.
    pub(crate) fn detect(exports: &[String]) -> Option<World> {
        World::ALL
            .into_iter()
            .find(|w| exports.iter().any(|e| w.exported_by(e)))
    }

    /// Whether the component in `bytes` needs an engine with the component
    /// model's concurrency: told from its own export section before it is
    /// compiled, since compiling it needs that engine already (and every
    /// other world keeps the cheaper one). Bytes that do not parse say no;
    /// compiling them reports why.
    pub(crate) fn needs_concurrency(bytes: &[u8]) -> bool {
        use wasmtime::wasmparser::{Parser, Payload};
        // Nested modules and components come inline between their own
        // header and end; only the outermost component's exports count.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else { return false };
            match payload {
                Payload::Version { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentExportSection(exports) if depth == 1 => {
                    for export in exports.into_iter().flatten() {
                        if World::WasiHttpService.exported_by(export.name.name) {
                            return true;
                        }
                    }
                }
                _ => {}
            }
        }
        false
    }

    /// What the CLI and logs call them all.
    pub(crate) fn describe_all() -> String {
        World::ALL
            .iter()
            .map(|w| format!("{w} (exporting {})", w.export()))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            World::Http3App => f.write_str("tq:plugin/http3-app@0.1.0"),
            World::QuicApp => f.write_str("tq:plugin/quic-app@0.1.0"),
            World::WasiHttp => f.write_str("wasi:http/proxy@0.2"),
            World::WasiHttpService => f.write_str("wasi:http/service@0.3"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_are_told_by_their_exports() {
        let of = |e: &[&str]| World::detect(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(of(&["tq:plugin/h3-handler@0.1.0"]), Some(World::Http3App));
        assert_eq!(
            of(&["tq:plugin/init@0.1.0", "tq:plugin/quic-handler@0.1.0"]),
            Some(World::QuicApp)
        );
        assert_eq!(
            of(&["wasi:http/incoming-handler@0.2.6"]),
            Some(World::WasiHttp)
        );
        assert_eq!(
            of(&["wasi:http/handler@0.3.0"]),
            Some(World::WasiHttpService)
        );
        assert_eq!(of(&["wasi:http/incoming-handler@0.3.0"]), None);
        assert_eq!(of(&[]), None);
    }
}
