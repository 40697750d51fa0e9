//! A plugin's stdout and stderr: captured into a bounded rolling window and
//! logged line by line after each call. A plugin that prints more than the
//! window between two calls loses its oldest bytes (counted and logged),
//! never its connection: the window bounds memory, not the plugin's life.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// What one instance printed and has not been logged yet.
#[derive(Clone)]
pub(crate) struct OutputCapture {
    inner: Arc<Mutex<Window>>,
}

struct Window {
    buf: BytesMut,
    capacity: usize,
    /// Bytes dropped from the front since the last take.
    dropped: u64,
}

/// What [`OutputCapture::take`] hands the logger.
pub(crate) struct Taken {
    /// Whole lines, and a last partial one when the window was full.
    pub(crate) text: Bytes,
    /// How many older bytes were dropped to make room.
    pub(crate) dropped: u64,
}

impl OutputCapture {
    /// A window of `capacity` bytes (at least 1 KiB).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Window {
                buf: BytesMut::new(),
                capacity: capacity.max(1024),
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        let mut w = self.lock();
        let cap = w.capacity;
        if bytes.len() >= cap {
            // One write of a window or more (wasmtime does not hold a write
            // to `check-write`'s permit): keep its tail only, in a fresh
            // buffer, so the window's allocation never grows with it.
            w.dropped += (w.buf.len() + bytes.len() - cap) as u64;
            w.buf = BytesMut::from(&bytes[bytes.len() - cap..]);
            return;
        }
        w.buf.extend_from_slice(bytes);
        let over = w.buf.len().saturating_sub(cap);
        if over > 0 {
            w.buf.advance(over);
            w.dropped += over as u64;
        }
        // Dropping from the front does not shrink the allocation: start a
        // new one before it drifts far from the window's size.
        if w.buf.capacity() > 4 * cap {
            w.buf = BytesMut::from(&w.buf[..]);
        }
    }

    /// Takes every complete line (all of it when the window is full, so a
    /// plugin printing without newlines still gets logged), leaving a
    /// partial last line for later.
    pub(crate) fn take(&self) -> Taken {
        let mut w = self.lock();
        let dropped = std::mem::take(&mut w.dropped);
        // The usual case after a call: nothing printed, nothing to split
        // off (which would allocate).
        if w.buf.is_empty() {
            return Taken {
                text: Bytes::new(),
                dropped,
            };
        }
        let end = if w.buf.len() >= w.capacity {
            w.buf.len()
        } else {
            w.buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        Taken {
            text: w.buf.split_to(end).freeze(),
            dropped,
        }
    }

    /// Everything left, partial line included (when the instance is done).
    pub(crate) fn take_all(&self) -> Taken {
        let mut w = self.lock();
        Taken {
            dropped: std::mem::take(&mut w.dropped),
            text: w.buf.split().freeze(),
        }
    }
}

impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: a full window makes room by dropping old bytes.
        Ok(self.lock().capacity)
    }
}

impl Pollable for OutputCapture {
    fn ready<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async {})
    }
}

impl AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_taken_whole_and_the_window_rolls() {
        let c = OutputCapture::new(1024);
        c.push(b"one\ntwo\nthr");
        let t = c.take();
        assert_eq!(&t.text[..], b"one\ntwo\n");
        assert_eq!(t.dropped, 0);
        c.push(b"ee\n");
        assert_eq!(&c.take().text[..], b"three\n");
        // Far more than the window: the oldest bytes go, memory stays bounded.
        for _ in 0..100 {
            c.push(&[b'x'; 1000]);
        }
        assert!(c.lock().buf.len() <= 1024);
        let t = c.take();
        assert_eq!(t.text.len(), 1024);
        assert_eq!(t.dropped, 100 * 1000 - 1024);
        assert_eq!(c.take_all().text.len(), 0);
        // One huge write keeps its tail, in a window-sized buffer.
        c.push(&vec![b'y'; 10 << 20]);
        assert!(c.lock().buf.capacity() <= 4 * 1024);
        let t = c.take();
        assert_eq!((t.text.len(), t.dropped), (1024, (10 << 20) - 1024));
    }
}
