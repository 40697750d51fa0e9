//! `tq-host get --hq`: HTTP/0.9 over QUIC (ALPN `hq-interop`), the QUIC
//! Interop Runner's protocol. Every path goes at once on one connection
//! (as many as the server's stream limit lets through, the rest as streams
//! free): `GET /path` and a line end on a stream of its own, and the answer
//! is the stream's bytes up to its end. A reset stream is a failure, and so
//! is a connection on which nothing arrives for the timeout while answers
//! are awaited.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::quic::{ApplicationOverQuic, QuicResult};

/// Where one answer goes: opened when its request goes out, so a long list
/// of URLs holds one descriptor per stream in flight, not per URL.
pub(super) enum Sink {
    Stdout,
    Path(PathBuf),
    File(std::fs::File),
}

impl Sink {
    fn open(&mut self) -> Result<(), Why> {
        if let Sink::Path(p) = self {
            let f = std::fs::File::create(&*p)
                .map_err(|e| Why::Write(format!("cannot create {}: {e}", p.display())))?;
            *self = Sink::File(f);
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().write_all(data),
            Sink::File(f) => f.write_all(data),
            Sink::Path(_) => Err(std::io::Error::other("not opened")),
        }
    }
}

/// One path to fetch and where its bytes go.
pub(super) struct Fetch {
    pub(super) path: String,
    pub(super) sink: Sink,
}

/// Why a fetch failed, by the exit code it calls for.
#[derive(Debug)]
pub(super) enum Why {
    /// The body could not be written out.
    Write(String),
    /// The server reset the stream, or the connection ended first.
    Cut(String),
    /// Nothing arrived for the timeout.
    Timeout(String),
}

/// How one fetch ended: the bytes received, or why it failed.
pub(super) type Outcome = Result<u64, Why>;

struct Active {
    index: usize,
    sink: Sink,
    got: u64,
    /// The end of the request line quiche has not taken yet.
    unsent: Vec<u8>,
}

/// Fetches its paths over one connection, then closes it and reports.
pub(super) struct HqFetch {
    waiting: VecDeque<(usize, Fetch)>,
    streams: HashMap<u64, Active>,
    next_stream: u64,
    outcomes: Vec<Option<Outcome>>,
    done: Option<oneshot::Sender<Vec<Outcome>>>,
    timeout: Duration,
    last_progress: Instant,
    timed_out: bool,
}

impl HqFetch {
    /// Fetches `fetches`, giving up when nothing arrives for `timeout`;
    /// their outcomes, in order, arrive on the receiver once all have ended
    /// (or the connection has).
    pub(super) fn new(
        fetches: Vec<Fetch>,
        timeout: Duration,
    ) -> (Self, oneshot::Receiver<Vec<Outcome>>) {
        let (tx, rx) = oneshot::channel();
        let n = fetches.len();
        (
            Self {
                waiting: fetches.into_iter().enumerate().collect(),
                streams: HashMap::new(),
                next_stream: 0,
                outcomes: (0..n).map(|_| None).collect(),
                done: Some(tx),
                timeout,
                last_progress: Instant::now(),
                timed_out: false,
            },
            rx,
        )
    }

    fn finish(&mut self, q: &mut quiche::Connection, i: usize, outcome: Outcome) -> QuicResult<()> {
        self.outcomes[i] = Some(outcome);
        if self.outcomes.iter().all(Option::is_some) {
            self.report();
            // H3_NO_ERROR's value; hq-interop has no codes of its own.
            q.close(true, 0x100, b"done")?;
        }
        Ok(())
    }

    /// Sends every outcome, those still open as failures.
    fn report(&mut self) {
        let Some(tx) = self.done.take() else {
            return;
        };
        let timed_out = self.timed_out;
        let timeout = self.timeout;
        let all = self
            .outcomes
            .iter_mut()
            .map(|o| {
                o.take().unwrap_or_else(|| {
                    Err(if timed_out {
                        Why::Timeout(format!("nothing arrived for {timeout:?}"))
                    } else {
                        Why::Cut("the connection ended before the answer".into())
                    })
                })
            })
            .collect();
        let _ = tx.send(all);
    }
}

impl Drop for HqFetch {
    fn drop(&mut self) {
        // The connection ended (or timed out) with answers still open: what
        // did complete is reported with them.
        self.report();
    }
}

impl ApplicationOverQuic for HqFetch {
    async fn wait_for_data(&mut self, _q: &mut quiche::Connection) -> QuicResult<()> {
        if self.done.is_none() {
            return std::future::pending().await;
        }
        tokio::time::sleep_until((self.last_progress + self.timeout).into()).await;
        self.timed_out = true;
        Err(format!("no answer for {:?}", self.timeout).into())
    }

    fn process_reads(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        let readable: Vec<u64> = q.readable().collect();
        let mut buf = vec![0u8; 64 * 1024];
        for id in readable {
            let Some(mut a) = self.streams.remove(&id) else {
                continue;
            };
            let ended = loop {
                match q.stream_recv(id, &mut buf) {
                    Ok((n, fin)) => {
                        self.last_progress = Instant::now();
                        if let Err(e) = a.sink.write(&buf[..n]) {
                            let _ = q.stream_shutdown(id, quiche::Shutdown::Read, 0x100);
                            break Some(Err(Why::Write(format!("cannot write the body: {e}"))));
                        }
                        a.got += n as u64;
                        if fin {
                            break Some(Ok(a.got));
                        }
                    }
                    Err(quiche::Error::Done) => break None,
                    Err(quiche::Error::StreamReset(code)) => {
                        break Some(Err(Why::Cut(format!(
                            "the server reset the stream (code {code:#x})"
                        ))))
                    }
                    Err(e) => break Some(Err(Why::Cut(format!("the stream failed: {e}")))),
                }
            };
            match ended {
                Some(outcome) => self.finish(q, a.index, outcome)?,
                None => {
                    self.streams.insert(id, a);
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        // The ends of request lines quiche could not take at once.
        for (&id, a) in &mut self.streams {
            if !a.unsent.is_empty() {
                if let Ok(n) = q.stream_send(id, &a.unsent, true) {
                    a.unsent.drain(..n);
                }
            }
        }
        while q.peer_streams_left_bidi() > 0 {
            let Some((i, mut fetch)) = self.waiting.pop_front() else {
                break;
            };
            if let Err(why) = fetch.sink.open() {
                self.finish(q, i, Err(why))?;
                continue;
            }
            let line = format!("GET {}\r\n", fetch.path).into_bytes();
            match q.stream_send(self.next_stream, &line, true) {
                Ok(n) => {
                    self.streams.insert(
                        self.next_stream,
                        Active {
                            index: i,
                            sink: fetch.sink,
                            got: 0,
                            unsent: line[n..].to_vec(),
                        },
                    );
                    self.next_stream += 4;
                }
                Err(quiche::Error::Done) | Err(quiche::Error::StreamLimit) => {
                    self.waiting.push_front((i, fetch));
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
