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
    // Where symbolic links led, the same rules: inside the root, no names
    // starting with a dot.
    let inside = real.strip_prefix(&root).ok()?;
    let hidden = inside
        .components()
        .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."));
    (!hidden && real.is_file()).then_some(real)
}

/// How many files the file servers of this process hold open at once
/// (streams being sent, slow readers included): past it, a request is
/// refused (503, or a reset for HTTP/0.9) rather than the process running
/// out of descriptors for its sockets.
pub const MAX_OPEN_FILES: usize = 512;

fn open_files() -> &'static Arc<tokio::sync::Semaphore> {
    static OPEN: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    OPEN.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_FILES)))
}

/// A file opened for sending, with its place under [`MAX_OPEN_FILES`].
struct Opened {
    file: std::fs::File,
    len: u64,
    path: PathBuf,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why a file is not sent.
enum Refused {
    NotFound,
    Busy,
}

/// Resolves `path` under `root` and opens it (blocking: call off the async
/// runtime, or for local files only). Opened without following a last
/// symbolic link and without blocking (a FIFO swapped in after `resolve`
/// cannot hang the caller), and checked to be a regular file once open.
fn open(root: &Path, path: &str) -> Result<Opened, Refused> {
    use std::os::unix::fs::OpenOptionsExt;
    let permit = open_files()
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refused::Busy)?;
    let path = resolve(root, path).ok_or(Refused::NotFound)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|_| Refused::NotFound)?;
    let meta = file.metadata().map_err(|_| Refused::NotFound)?;
    if !meta.is_file() {
        return Err(Refused::NotFound);
    }
    Ok(Opened {
        file,
        len: meta.len(),
        path,
        _permit: permit,
    })
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
        let mut r = self.answer(req).await;
        // HEAD is GET without a body, on every path (RFC 9110 §9.3.2).
        if head {
            *r.body_mut() = ResponseBody::Empty;
        }
        r
    }
}

impl StaticFiles {
    async fn answer(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            let mut r = answer(http::StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        let head = req.method() == http::Method::HEAD;
        let root = self.root.clone();
        let path = req.uri().path().to_owned();
        let opened = tokio::task::spawn_blocking(move || open(&root, &path)).await;
        let Opened {
            file,
            len,
            path,
            _permit: permit,
        } = match opened {
            Ok(Ok(o)) => o,
            Ok(Err(Refused::Busy)) => {
                return answer(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "too many files being sent; try again\n",
                )
            }
            Ok(Err(Refused::NotFound)) | Err(_) => {
                return answer(http::StatusCode::NOT_FOUND, "not found\n")
            }
        };
        let mut file = tokio::fs::File::from_std(file);
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
            // the client goes away (the writer's channel closes). The file's
            // place under MAX_OPEN_FILES goes with it.
            tokio::spawn(async move {
                let _permit = permit;
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
/// The code when [`MAX_OPEN_FILES`] are already being sent.
pub const HQ_BUSY: u64 = 0x101;

/// Serves the files of one directory over HTTP/0.9 on raw QUIC (ALPN
/// `hq-interop`): on each client bidirectional stream the client sends
/// `GET /path` and a line end, and gets the file's bytes and the stream's
/// end. A request line longer than 1 KiB, or a path that leaves the
/// directory or names no file, resets the stream with [`HQ_NOT_FOUND`].
///
/// Files are opened and read on the connection's task (local files, from
/// the page cache in practice), and only as much as the stream can send at
/// once, into one buffer the connection's streams share: nothing is held
/// for a slow reader but the open file, under [`MAX_OPEN_FILES`].
#[derive(Debug)]
pub struct HqApplication {
    root: Arc<Path>,
    streams: HashMap<u64, HqStream>,
    scratch: Vec<u8>,
}

#[derive(Debug)]
struct HqStream {
    state: HqState,
    /// The client's side of the stream is over (its FIN, or a reset).
    client_done: bool,
}

enum HqState {
    /// The request line so far.
    Request(Vec<u8>),
    /// Sending the file: what is left of it.
    Sending(Opened, u64),
    /// All sent; the entry stays until the client's side ends, so that
    /// what still comes on the stream is read and dropped, not taken for a
    /// new request.
    Answered,
}

impl std::fmt::Debug for HqState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HqState::Request(r) => write!(f, "Request({} bytes)", r.len()),
            HqState::Sending(o, left) => {
                write!(f, "Sending({}, {left} left)", o.path.display())
            }
            HqState::Answered => f.write_str("Answered"),
        }
    }
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

    /// Reads what the client sent on `id`: the request line (then opens the
    /// file, or resets the stream), or anything after it, dropped.
    fn read_stream(&mut self, qconn: &mut quiche::Connection, id: u64) {
        let stream = self.streams.entry(id).or_insert(HqStream {
            state: HqState::Request(Vec::new()),
            client_done: false,
        });
        let mut buf = [0u8; 512];
        loop {
            match qconn.stream_recv(id, &mut buf) {
                Ok((n, fin)) => {
                    if let HqState::Request(line) = &mut stream.state {
                        line.extend_from_slice(&buf[..n]);
                        if line.len() > MAX_REQUEST {
                            break;
                        }
                    }
                    if fin {
                        stream.client_done = true;
                        break;
                    }
                }
                Err(quiche::Error::Done) => break,
                // Reset by the client, or gone: no more to read.
                Err(_) => {
                    stream.client_done = true;
                    break;
                }
            }
        }
        match &stream.state {
            HqState::Request(line) => {
                let end = line.iter().position(|&b| b == b'\n');
                if end.is_none() && !stream.client_done && line.len() <= MAX_REQUEST {
                    return; // more to come
                }
                let line = &line[..end.unwrap_or(line.len())];
                let path = std::str::from_utf8(line)
                    .ok()
                    .filter(|_| line.len() <= MAX_REQUEST)
                    .map(str::trim_end)
                    .and_then(|l| l.strip_prefix("GET "))
                    .map(str::trim);
                let opened = match path {
                    Some(p) => open(&self.root, p),
                    None => Err(Refused::NotFound),
                };
                match opened {
                    Ok(o) => {
                        let len = o.len;
                        stream.state = HqState::Sending(o, len);
                    }
                    Err(why) => {
                        let code = match why {
                            Refused::NotFound => HQ_NOT_FOUND,
                            Refused::Busy => HQ_BUSY,
                        };
                        let _ = qconn.stream_shutdown(id, quiche::Shutdown::Read, code);
                        let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, code);
                        self.streams.remove(&id);
                    }
                }
            }
            HqState::Answered if stream.client_done => {
                self.streams.remove(&id);
            }
            HqState::Sending(..) | HqState::Answered => {}
        }
    }

    /// Sends what stream `id` can take of its file; whether it is done
    /// (all sent, or abandoned).
    fn send_file(
        qconn: &mut quiche::Connection,
        scratch: &mut Vec<u8>,
        id: u64,
        opened: &mut Opened,
        left: &mut u64,
    ) -> bool {
        loop {
            if *left == 0 {
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
            let take = room.min(CHUNK).min(usize::try_from(*left).unwrap_or(CHUNK));
            scratch.resize(take, 0);
            if opened.file.read_exact(scratch).is_err() {
                // Shorter than it was, or unreadable: the client must not
                // take what it got for the whole file.
                let _ = qconn.stream_shutdown(id, quiche::Shutdown::Write, HQ_NOT_FOUND);
                return true;
            }
            let fin = *left == take as u64;
            match qconn.stream_send(id, scratch, fin) {
                Ok(n) if n == take => {
                    *left -= take as u64;
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
                self.read_stream(qconn, id);
            } else {
                let mut sink = [0u8; 512];
                while let Ok((_, false)) = qconn.stream_recv(id, &mut sink) {}
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, qconn: &mut quiche::Connection) -> QuicResult<()> {
        let scratch = &mut self.scratch;
        self.streams.retain(|&id, s| {
            if let HqState::Sending(opened, left) = &mut s.state {
                if Self::send_file(qconn, scratch, id, opened, left) {
                    // The file and its place under MAX_OPEN_FILES go now.
                    s.state = HqState::Answered;
                }
            }
            !(matches!(s.state, HqState::Answered) && s.client_done)
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tq-files-{name}-{}", std::process::id()));
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
        // A plain name leading to a hidden one inside.
        let to_hidden = dir.join("visible");
        let _ = std::fs::remove_file(&to_hidden);
        std::os::unix::fs::symlink(dir.join(".hidden"), &to_hidden).unwrap();
        dir
    }

    #[test]
    fn paths_map_inside_the_directory_only() {
        let root = site("paths");
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
            "/visible",
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
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(root.with_extension("outside"));
    }

    /// Runs `app` on `server` and moves packets both ways until quiet.
    fn pump(
        app: &mut HqApplication,
        client: &mut quiche::Connection,
        server: &mut quiche::Connection,
    ) {
        use crate::quic::test_pair::flush;
        for _ in 0..50 {
            if server.is_established() {
                app.process_reads(server).unwrap();
                app.process_writes(server).unwrap();
            }
            if flush(client, server) + flush(server, client) == 0 {
                break;
            }
        }
    }

    #[test]
    fn a_request_whose_end_comes_later_is_answered_once_and_forgotten() {
        use crate::quic::test_pair::connect;
        let root = site("late-fin");
        let (mut client, mut server) = connect(crate::quic::QuicSettings {
            alpn: vec!["hq-interop".into()],
            ..Default::default()
        });
        let mut app = HqApplication::new(&root);
        pump(&mut app, &mut client, &mut server);
        // The request line, without the stream's end (as quic-go sends it).
        client.stream_send(0, b"GET /a.txt\r\n", false).unwrap();
        client.stream_send(4, b"GET /missing\r\n", true).unwrap();
        pump(&mut app, &mut client, &mut server);
        let mut buf = [0u8; 64];
        assert_eq!(client.stream_recv(0, &mut buf).unwrap(), (1, true));
        assert_eq!(&buf[..1], b"a");
        assert_eq!(
            client.stream_recv(4, &mut buf),
            Err(quiche::Error::StreamReset(HQ_NOT_FOUND))
        );
        // Answered, and kept until the client's end arrives: then forgotten,
        // without a reset over the finished answer.
        assert_eq!(app.streams.len(), 1, "{:?}", app.streams);
        client.stream_send(0, b"", true).unwrap();
        pump(&mut app, &mut client, &mut server);
        assert!(app.streams.is_empty(), "{:?}", app.streams);
        assert!(
            !matches!(
                client.stream_recv(0, &mut buf),
                Err(quiche::Error::StreamReset(_))
            ),
            "the finished answer was reset"
        );
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(root.with_extension("outside"));
    }

    #[test]
    fn thousands_of_requests_on_one_connection_leave_nothing_behind() {
        use crate::quic::test_pair::connect;
        let root = site("many");
        std::fs::write(root.join("big.bin"), vec![9u8; 300_000]).unwrap();
        let (mut client, mut server) = connect(crate::quic::QuicSettings {
            alpn: vec!["hq-interop".into()],
            ..Default::default()
        });
        let mut app = HqApplication::new(&root);
        pump(&mut app, &mut client, &mut server);
        let mut buf = [0u8; 64];
        // 3,000 requests, 50 at a time: found, missing, and one the client
        // stops reading (STOP_SENDING) before the answer.
        for round in 0..60u64 {
            for k in 0..50u64 {
                let id = (round * 50 + k) * 4;
                let line: &[u8] = match k % 3 {
                    _ if k == 49 => b"GET /big.bin\r\n",
                    0 => b"GET /a.txt\r\n",
                    1 => b"GET /missing\r\n",
                    _ => b"GET /sub/b.bin\r\n",
                };
                client.stream_send(id, line, true).unwrap();
            }
            pump(&mut app, &mut client, &mut server);
            // The large file is under way: the client stops it mid-send
            // (STOP_SENDING), having read part of it.
            let big = (round * 50 + 49) * 4;
            let mut part = vec![0u8; 16 << 10];
            let (n, fin) = client.stream_recv(big, &mut part).unwrap();
            assert!(n > 0 && !fin, "the large file was not mid-send");
            client
                .stream_shutdown(big, quiche::Shutdown::Read, 0)
                .unwrap();
            for k in 0..49u64 {
                let id = (round * 50 + k) * 4;
                let got = client.stream_recv(id, &mut buf);
                match k % 3 {
                    0 => assert_eq!((got, buf[0]), (Ok((1, true)), b'a'), "stream {id}"),
                    1 => assert_eq!(
                        got,
                        Err(quiche::Error::StreamReset(HQ_NOT_FOUND)),
                        "stream {id}"
                    ),
                    _ => assert_eq!((got, buf[0]), (Ok((1, true)), b'b'), "stream {id}"),
                }
            }
            pump(&mut app, &mut client, &mut server);
            assert!(app.streams.is_empty(), "round {round}: {:?}", app.streams);
        }
        // One shared buffer of at most one read (Vec growth may double it).
        assert!(app.scratch.capacity() <= 2 * CHUNK);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(root.with_extension("outside"));
    }
}
