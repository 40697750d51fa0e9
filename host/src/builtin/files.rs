//! Serving a directory's files: over HTTP/3 ([`StaticFiles`], what
//! `tq-host --www DIR` serves) and over HTTP/0.9 on raw QUIC
//! ([`HqApplication`], ALPN `hq-interop`, the protocol of the QUIC Interop
//! Runner's test cases). Both map a request path onto the directory the
//! same way ([`resolve`]): no `..`, no hidden names, nothing a symbolic
//! link leads out of the directory to.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::http3::{RequestBody, RequestHandler, ResponseBody};
use crate::quic::{ApplicationOverQuic, QuicResult};

/// How much of a file is read at a time.
const CHUNK: usize = 64 * 1024;

/// The file a request path names under `root`, or `None`: the path must be
/// absolute, its segments plain names (not empty, `.`, `..`, nor starting
/// with a dot, and without `\` or NUL), and the file, symbolic links
/// followed, a regular file inside `root`. `/` and a path ending in `/`
/// name that directory's `index.html`. A query (`?...`) is ignored.
/// Percent-escapes are not decoded: a name with one is looked up as
/// written.
pub(crate) fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let rest = path.strip_prefix('/')?;
    let mut file = root.to_path_buf();
    let mut segments: Vec<&str> = rest.split('/').collect();
    if segments.last() == Some(&"") {
        segments.pop();
        segments.push("index.html");
    }
    for s in segments {
        if s.is_empty() || s.starts_with('.') || s.contains(['\\', '\0']) {
            return None;
        }
        file.push(s);
    }
    let real = file.canonicalize().ok()?;
    let root = root.canonicalize().ok()?;
    (real.starts_with(&root) && real.is_file()).then_some(real)
}

/// A content type from the file name's extension; `application/octet-stream`
/// for any other.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js" | "mjs") => "text/javascript",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Serves the files of one directory over HTTP/3: `GET` and `HEAD`, with
/// `Content-Length` and a content type from the extension; 404 for a path
/// that leaves the directory (see the module's rules) or names no file,
/// 405 for other methods. A
/// file up to 64 KiB is read whole; a larger one is streamed 64 KiB at a
/// time as the client reads.
///
/// ```no_run
/// # async fn demo(listener: tq_host::quic::Listener<tq_host::metrics::DefaultMetrics>) {
/// use std::sync::Arc;
/// use tq_host::builtin::StaticFiles;
/// use tq_host::server::{serve, ServeOptions, Service};
///
/// let site = StaticFiles::new("/srv/www");
/// serve(listener, Service::Http3(Arc::new(site)), ServeOptions::default(), std::future::pending()).await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StaticFiles {
    root: Arc<Path>,
}

impl StaticFiles {
    /// Serves the files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into().into(),
        }
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn answer(code: http::StatusCode, text: &'static str) -> http::Response<ResponseBody> {
    let mut r = http::Response::new(ResponseBody::Full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl RequestHandler for StaticFiles {
    async fn handle(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
        let head = req.method() == http::Method::HEAD;
        if req.method() != http::Method::GET && !head {
            let mut r = answer(http::StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        let not_found = || answer(http::StatusCode::NOT_FOUND, "not found\n");
        let Some(path) = resolve(&self.root, req.uri().path()) else {
            return not_found();
        };
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return not_found();
        };
        let Ok(len) = file.metadata().await.map(|m| m.len()) else {
            return not_found();
        };
        let body = if head {
            ResponseBody::Empty
        } else if len <= CHUNK as u64 {
            let mut whole = Vec::with_capacity(len as usize);
            if file.read_to_end(&mut whole).await.is_err() || whole.len() as u64 != len {
                return answer(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot read the file\n",
                );
            }
            ResponseBody::Full(whole.into())
        } else {
            let (writer, body) = ResponseBody::channel(4);
            // Owned by the response: it ends at the end of the file, or when
            // the client goes away (the writer's channel closes).
            tokio::spawn(async move {
                let mut left = len;
                while left > 0 {
                    let mut chunk = vec![0u8; CHUNK.min(left as usize)];
                    // A file that shrank or failed mid-way ends the stream
                    // short of its Content-Length, which the client sees.
                    if file.read_exact(&mut chunk).await.is_err() {
                        return;
                    }
                    left -= chunk.len() as u64;
                    if writer.write(chunk).await.is_err() {
                        return;
                    }
                }
            });
            body
        };
        let mut r = http::Response::new(body);
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type(&path)),
        );
        r
    }
}

/// The application error code an `hq-interop` stream is reset with when
/// its request names no file or is malformed.
pub const HQ_NOT_FOUND: u64 = 0x100;

/// Serves the files of one directory over HTTP/0.9 on raw QUIC (ALPN
/// `hq-interop`): on each client bidirectional stream the client sends
/// `GET /path` and a line end, and gets the file's bytes and the stream's
/// end. A request line longer than 1 KiB, or a path that leaves the
/// directory or names no file, resets the stream with [`HQ_NOT_FOUND`].
///
/// Files are read on the connection's task (local files, from the page
/// cache in practice), and only as much as the stream can send at once,
/// into one buffer the connection's streams share: nothing is held for a
/// slow reader but the open file.
#[derive(Debug)]
pub struct HqApplication {
    root: Arc<Path>,
    streams: HashMap<u64, HqStream>,
    scratch: Vec<u8>,
}

#[derive(Debug, Default)]
struct HqStream {
    /// The request line so far, until the file is open.
    request: Vec<u8>,
    file: Option<std::fs::File>,
    /// Bytes of the file not sent yet.
    left: u64,
}

/// The longest request line taken.
const MAX_REQUEST: usize = 1024;

impl HqApplication {
    /// Serves the files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into().into(),
            streams: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Reads what the client sent on `id`; opens the file once the request
    /// line is whole, or resets the stream.
    fn read_request(&mut self, qconn: &mut quiche::Connection, id: u64) {
        let stream = self.streams.entry(id).or_default();
        let mut buf = [0u8; 512];
        if stream.file.is_some() {
            // Anything after the request line is read and dropped.
            while let Ok((_, false)) = qconn.stream_recv(id, &mut buf) {}
            return;
        }
        let mut fin = false;
        loop {
            match qconn.stream_recv(id, &mut buf) {
                Ok((n, f)) => {
                    stream.request.extend_from_slice(&buf[..n]);
                    fin = f;
                    if stream.request.len() > MAX_REQUEST || f {
                        break;
                    }
                }
                Err(quiche::Error::Done) => break,
                Err(_) => {
                    // Reset by the client, or gone: nothing to answer.
                    self.streams.remove(&id);
                    return;
                }
            }
        }
        let line_end = stream.request.iter().position(|&b| b == b'\n');
        if line_end.is_none() && !fin && stream.request.len() <= MAX_REQUEST {
            return; // more to come
        }
        let line = &stream.request[..line_end.unwrap_or(stream.request.len())];
        let path = std::str::from_utf8(line)
            .ok()
            .map(str::trim_end)
            .and_then(|l| l.strip_prefix("GET "))
            .map(str::trim);
        let opened = path
            .filter(|_| line.len() <= MAX_REQUEST)
            .and_then(|p| resolve(&self.root, p))
            .and_then(|p| std::fs::File::open(p).ok())
            .and_then(|f| Some((f.metadata().ok()?.len(), f)));
        match opened {
            Some((len, f)) => {
                stream.file = Some(f);
                stream.left = len;
                stream.request = Vec::new();
            }
            None => {
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, HQ_NOT_FOUND);
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, HQ_NOT_FOUND);
                self.streams.remove(&id);
            }
        }
    }

    /// Sends what stream `id` can take of its file; whether it is done
    /// (all sent, or abandoned).
    fn send_file(
        qconn: &mut quiche::Connection,
        scratch: &mut Vec<u8>,
        id: u64,
        s: &mut HqStream,
    ) -> bool {
        let Some(file) = s.file.as_mut() else {
            return false;
        };
        loop {
            if s.left == 0 {
                // An empty file: only the end to send.
                return match qconn.stream_send(id, &[], true) {
                    Ok(_) => true,
                    Err(quiche::Error::Done) => false,
                    Err(_) => true,
                };
            }
            let room = match qconn.stream_capacity(id) {
                Ok(0) => return false,
                Ok(n) => n,
                // Stopped by the client, or gone.
                Err(_) => return true,
            };
            let take = room
                .min(CHUNK)
                .min(usize::try_from(s.left).unwrap_or(CHUNK));
            scratch.resize(take, 0);
            if file.read_exact(scratch).is_err() {
                // Shorter than it was, or unreadable: the client must not
                // take what it got for the whole file.
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, HQ_NOT_FOUND);
                return true;
            }
            let fin = s.left == take as u64;
            match qconn.stream_send(id, scratch, fin) {
                Ok(n) if n == take => {
                    s.left -= take as u64;
                    if fin {
                        return true;
                    }
                }
                // Capacity said it would fit: a short write is not
                // expected, and the stream ends rather than skip bytes.
                Ok(_) | Err(quiche::Error::Done) => {
                    let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, HQ_NOT_FOUND);
                    return true;
                }
                Err(_) => return true,
            }
        }
    }
}

impl ApplicationOverQuic for HqApplication {
    async fn wait_for_data(&mut self, _qconn: &mut quiche::Connection) -> QuicResult<()> {
        // Files are read as the peer's flow control lets them out.
        std::future::pending().await
    }

    fn process_reads(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let readable: Vec<u64> = qconn.readable().collect();
        for id in readable {
            // Only client-initiated bidirectional streams carry requests.
            if id % 4 == 0 {
                self.read_request(qconn, id);
            } else {
                let mut sink = [0u8; 512];
                while let Ok((_, false)) = qconn.stream_recv(id, &mut sink) {}
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let scratch = &mut self.scratch;
        self.streams
            .retain(|&id, s| !Self::send_file(qconn, scratch, id, s));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tq-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"a").unwrap();
        std::fs::write(dir.join("index.html"), b"<p>").unwrap();
        std::fs::write(dir.join("sub/b.bin"), b"b").unwrap();
        std::fs::write(dir.join(".hidden"), b"h").unwrap();
        let outside = dir.with_extension("outside");
        std::fs::write(&outside, b"secret").unwrap();
        let link = dir.join("escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        dir
    }

    #[test]
    fn paths_map_inside_the_directory_only() {
        let root = site();
        let ok = |p: &str| resolve(&root, p).is_some();
        assert!(ok("/a.txt") && ok("/sub/b.bin") && ok("/") && ok("/a.txt?x=1"));
        for bad in [
            "a.txt",
            "/../a.txt",
            "/sub/../a.txt",
            "/./a.txt",
            "//a.txt",
            "/.hidden",
            "/escape",
            "/sub",
            "/sub/",
            "/missing",
            "/a.txt\0",
            "/sub\\b.bin",
        ] {
            assert!(!ok(bad), "{bad:?} was served");
        }
        assert_eq!(
            content_type(Path::new("x.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x")), "application/octet-stream");
    }
}
