//! `tq-host get --hq`: HTTP/0.9 over QUIC (ALPN `hq-interop`), the QUIC
//! Interop Runner's protocol. Every path goes at once on one connection
//! (as many as the server's stream limit lets through, the rest as streams
//! free): `GET /path` and a line end on a stream of its own, and the answer
//! is the stream's bytes up to its end. A reset stream is a failure.

use std::collections::{HashMap, VecDeque};
use std::io::Write;

use tokio::sync::oneshot;

use crate::quic::{ApplicationOverQuic, QuicResult};

/// Where one answer goes.
pub(super) enum Sink {
    Stdout,
    File(std::fs::File),
}

impl Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().write_all(data),
            Sink::File(f) => f.write_all(data),
        }
    }
}

/// One path to fetch and where its bytes go.
pub(super) struct Fetch {
    pub(super) path: String,
    pub(super) sink: Sink,
}

/// How one fetch ended: the bytes received, or why it failed.
pub(super) type Outcome = Result<u64, String>;

/// Fetches its paths over one connection, then closes it and reports.
pub(super) struct HqFetch {
    waiting: VecDeque<(usize, Fetch)>,
    streams: HashMap<u64, (usize, Fetch, u64)>,
    next_stream: u64,
    outcomes: Vec<Option<Outcome>>,
    done: Option<oneshot::Sender<Vec<Outcome>>>,
}

impl HqFetch {
    /// Fetches `fetches`; their outcomes, in order, arrive on the receiver
    /// once all have ended.
    pub(super) fn new(fetches: Vec<Fetch>) -> (Self, oneshot::Receiver<Vec<Outcome>>) {
        let (tx, rx) = oneshot::channel();
        let n = fetches.len();
        (
            Self {
                waiting: fetches.into_iter().enumerate().collect(),
                streams: HashMap::new(),
                next_stream: 0,
                outcomes: (0..n).map(|_| None).collect(),
                done: Some(tx),
            },
            rx,
        )
    }

    fn finish(&mut self, q: &mut quiche::Connection, i: usize, outcome: Outcome) -> QuicResult<()> {
        self.outcomes[i] = Some(outcome);
        if self.outcomes.iter().all(Option::is_some) {
            if let Some(tx) = self.done.take() {
                let all = self
                    .outcomes
                    .iter_mut()
                    .map(|o| o.take().unwrap_or_else(|| Err("not fetched".into())))
                    .collect();
                let _ = tx.send(all);
            }
            // H3_NO_ERROR's value; hq-interop has no codes of its own.
            q.close(true, 0x100, b"done")?;
        }
        Ok(())
    }
}

impl ApplicationOverQuic for HqFetch {
    async fn wait_for_data(&mut self, _q: &mut quiche::Connection) -> QuicResult<()> {
        std::future::pending().await
    }

    fn process_reads(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        let readable: Vec<u64> = q.readable().collect();
        let mut buf = vec![0u8; 64 * 1024];
        for id in readable {
            let Some((i, mut fetch, mut got)) = self.streams.remove(&id) else {
                continue;
            };
            let ended = loop {
                match q.stream_recv(id, &mut buf) {
                    Ok((n, fin)) => {
                        if let Err(e) = fetch.sink.write(&buf[..n]) {
                            let _ = q.stream_shutdown(id, quiche::Shutdown::Read, 0x100);
                            break Some(Err(format!("cannot write the body: {e}")));
                        }
                        got += n as u64;
                        if fin {
                            break Some(Ok(got));
                        }
                    }
                    Err(quiche::Error::Done) => break None,
                    Err(quiche::Error::StreamReset(code)) => {
                        break Some(Err(format!("the server reset the stream (code {code:#x})")))
                    }
                    Err(e) => break Some(Err(format!("the stream failed: {e}"))),
                }
            };
            match ended {
                Some(outcome) => self.finish(q, i, outcome)?,
                None => {
                    self.streams.insert(id, (i, fetch, got));
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, q: &mut quiche::Connection) -> QuicResult<()> {
        while q.peer_streams_left_bidi() > 0 {
            let Some((i, fetch)) = self.waiting.pop_front() else {
                break;
            };
            let line = format!("GET {}\r\n", fetch.path);
            // The whole line at once, or not yet: a stream's first bytes
            // fit its initial window unless the server set it tiny.
            if q.stream_capacity(self.next_stream).unwrap_or(usize::MAX) < line.len() {
                self.waiting.push_front((i, fetch));
                break;
            }
            match q.stream_send(self.next_stream, line.as_bytes(), true) {
                Ok(_) => {
                    self.streams.insert(self.next_stream, (i, fetch, 0));
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
