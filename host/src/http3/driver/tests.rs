//! The driver over an in-memory quiche client/server pair (no sockets):
//! packets are moved by hand and both drivers' hooks are called in the
//! order the worker calls them, so each test controls every step and can
//! look at the stream tables between them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::{ClientH3Driver, ServerH3Driver};
use crate::http3::{
    headers, H3Controller, H3Error, H3Event, Http3Settings, InboundFrame, IncomingRequest,
    OutboundFrame, RequestStream, H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED,
};
use crate::quic::{test_pair, ApplicationClose, ApplicationOverQuic, HandshakeInfo, QuicSettings};

fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// A connected client and server, each with its driver.
struct Pair {
    client: quiche::Connection,
    server: quiche::Connection,
    cd: ClientH3Driver,
    sd: ServerH3Driver,
    cc: H3Controller,
    sc: H3Controller,
    established: bool,
    caddr: SocketAddr,
    saddr: SocketAddr,
}

impl Pair {
    fn new(h3: Http3Settings) -> Self {
        let (client, server) = test_pair::connect(QuicSettings::default());
        let caddr: SocketAddr = test_pair::CLIENT.parse().unwrap();
        let saddr: SocketAddr = test_pair::SERVER.parse().unwrap();
        let (cd, cc) = ClientH3Driver::new_client(h3.clone());
        let (sd, sc) = ServerH3Driver::new_server(h3);
        let mut p = Self {
            client,
            server,
            cd,
            sd,
            cc,
            sc,
            established: false,
            caddr,
            saddr,
        };
        p.run();
        assert!(p.established, "handshake completes in memory");
        p
    }

    /// Runs both sides until no packet moves.
    fn run(&mut self) {
        let mut quiet = 0;
        for _ in 0..10_000 {
            if !self.established && self.client.is_established() && self.server.is_established() {
                let info = |peer, local| HandshakeInfo {
                    alpn: b"h3".to_vec(),
                    server_name: Some("localhost".into()),
                    peer_addr: peer,
                    local_addr: local,
                    handshake_duration: Duration::ZERO,
                    is_resumed: false,
                    early_data: Default::default(),
                };
                self.cd
                    .on_conn_established(&mut self.client, &info(self.saddr, self.caddr))
                    .unwrap();
                self.sd
                    .on_conn_established(&mut self.server, &info(self.caddr, self.saddr))
                    .unwrap();
                self.established = true;
            }
            if self.established {
                for (d, q) in [
                    (&mut self.cd as &mut dyn Side, &mut self.client),
                    (&mut self.sd, &mut self.server),
                ] {
                    if !q.is_closed() {
                        let _ = d.reads(q);
                        // As the worker does: a hook's error closes the
                        // connection, with the application's own code if
                        // it chose one.
                        if let Err(e) = d.writes(q) {
                            let (code, reason) = match e.downcast_ref::<ApplicationClose>() {
                                Some(c) => (c.code, c.reason.clone()),
                                None => (crate::quic::INTERNAL_ERROR_CODE, e.to_string()),
                            };
                            let _ = q.close(true, code, reason.as_bytes());
                        }
                    }
                }
            }
            let moved = test_pair::flush(&mut self.client, &mut self.server)
                + test_pair::flush(&mut self.server, &mut self.client);
            quiet = if moved == 0 { quiet + 1 } else { 0 };
            if quiet >= 3 {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    /// Sends a request from the client and returns its stream.
    fn request(&mut self, method: &str, has_body: bool) -> Result<RequestStream, H3Error> {
        let handle = self.cc.handle();
        let head = headers(&[
            (":method", method),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/"),
        ]);
        let mut fut = std::pin::pin!(handle.send_request(head, has_body));
        for _ in 0..3 {
            if let Poll::Ready(r) = poll_once(fut.as_mut()) {
                return r;
            }
            self.run();
        }
        panic!("send_request never answered");
    }

    /// The next request the server's application sees.
    fn next_request(&mut self) -> IncomingRequest {
        loop {
            match self.sc.events.try_recv() {
                Ok(H3Event::IncomingRequest(r)) => return r,
                Ok(_) => continue,
                Err(e) => panic!("no request: {e:?}"),
            }
        }
    }

    fn table_sizes(&self) -> (usize, usize) {
        (self.cd.stream_count(), self.sd.stream_count())
    }
}

/// Both drivers behind one trait object, so `run` can loop over them.
trait Side {
    fn reads(&mut self, q: &mut quiche::Connection) -> crate::quic::QuicResult<()>;
    fn writes(&mut self, q: &mut quiche::Connection) -> crate::quic::QuicResult<()>;
}

impl<H: super::DriverHooks> Side for super::H3Driver<H> {
    fn reads(&mut self, q: &mut quiche::Connection) -> crate::quic::QuicResult<()> {
        self.process_reads(q)
    }
    fn writes(&mut self, q: &mut quiche::Connection) -> crate::quic::QuicResult<()> {
        self.process_writes(q)
    }
}

/// Every frame waiting on a receiver, without blocking.
fn drain(rx: &mut crate::http3::BodyReceiver) -> Vec<InboundFrame> {
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(f)) = rx.poll_recv(&mut cx) {
        out.push(f);
    }
    out
}

fn respond(req: &IncomingRequest, body: &'static [u8]) {
    req.response
        .try_send(OutboundFrame::Headers {
            headers: headers(&[(":status", "200")]),
            fin: body.is_empty(),
        })
        .unwrap();
    if !body.is_empty() {
        req.response
            .try_send(OutboundFrame::Body(Bytes::from_static(body), true))
            .unwrap();
    }
}

#[test]
fn body_less_requests_leave_no_stream_entry() {
    let mut p = Pair::new(Http3Settings::default());
    for i in 0..200 {
        let mut stream = p.request("GET", false).unwrap();
        p.run();
        let req = p.next_request();
        assert!(req.body.is_none());
        respond(&req, if i % 2 == 0 { b"hello" } else { b"" });
        drop(req);
        p.run();
        let frames = drain(&mut stream.response);
        assert!(
            matches!(frames.last(), Some(InboundFrame::Finished)),
            "{frames:?}"
        );
        drop(stream);
        p.run();
        assert_eq!(p.table_sizes(), (0, 0), "after request {i}");
    }
    assert_eq!(p.sc.handle().open_streams(), 0);
    assert_eq!(p.sc.handle().requests(), 200);
}

#[test]
fn requests_with_bodies_leave_no_stream_entry() {
    let mut p = Pair::new(Http3Settings::default());
    for _ in 0..50 {
        let mut stream = p.request("POST", true).unwrap();
        let body = stream.body.take().unwrap();
        body.try_send(OutboundFrame::Body(Bytes::from_static(b"ping"), true))
            .unwrap();
        drop(body);
        p.run();
        let mut req = p.next_request();
        let mut rx = req.body.take().unwrap();
        let got = drain(&mut rx);
        assert_eq!(
            got,
            vec![
                InboundFrame::Body(Bytes::from_static(b"ping")),
                InboundFrame::Finished
            ]
        );
        drop(rx);
        respond(&req, b"pong");
        drop(req);
        p.run();
        let frames = drain(&mut stream.response);
        assert!(frames.contains(&InboundFrame::Body(Bytes::from_static(b"pong"))));
        drop(stream);
        p.run();
        assert_eq!(p.table_sizes(), (0, 0));
    }
}

#[test]
fn a_request_reset_by_the_client_leaves_no_entry() {
    let mut p = Pair::new(Http3Settings::default());
    let stream = p.request("POST", true).unwrap();
    p.run();
    let mut req = p.next_request();
    p.cc.handle()
        .reset_stream(stream.stream_id, H3_REQUEST_CANCELLED);
    p.cc.handle()
        .stop_sending(stream.stream_id, H3_REQUEST_CANCELLED);
    p.run();
    let mut rx = req.body.take().unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![InboundFrame::Reset(H3_REQUEST_CANCELLED)]
    );
    drop((rx, req, stream));
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
}

#[test]
fn a_handler_that_drops_an_unfinished_request_body_still_answers_in_full() {
    // A handler drops the request body before the request's end has
    // arrived (a GET handler does so at once): the end, arriving later,
    // is read and dropped, nobody is asked to stop, and the answer
    // arrives whole.
    let mut p = Pair::new(Http3Settings::default());
    let mut stream = p.request("POST", true).unwrap();
    p.run();
    let mut req = p.next_request();
    drop(req.body.take());
    p.run();
    respond(&req, b"answer");
    drop(req);
    p.run();
    let body = stream.body.take().unwrap();
    body.try_send(OutboundFrame::Body(Bytes::from_static(b"late"), true))
        .expect("the request's sender was not stopped");
    drop(body);
    p.run();
    let frames = drain(&mut stream.response);
    assert!(
        frames.contains(&InboundFrame::Body(Bytes::from_static(b"answer")))
            && frames.contains(&InboundFrame::Finished)
            && !frames.iter().any(|f| matches!(f, InboundFrame::Reset(_))),
        "{frames:?}"
    );
    drop(stream);
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
}

#[test]
fn a_request_reset_with_h3_no_error_still_gets_its_answer() {
    // A client cuts its request body short on purpose (H3_NO_ERROR, RFC
    // 9114 §4.1.1): the body ends with that reset, the handler is not
    // told to stop (no StreamReset event), and its answer arrives whole.
    // H3_REQUEST_CANCELLED, by contrast, is a cancel (the test above).
    let mut p = Pair::new(Http3Settings::default());
    let mut stream = p.request("POST", true).unwrap();
    p.run();
    let mut req = p.next_request();
    p.cc.handle()
        .reset_stream(stream.stream_id, crate::http3::H3_NO_ERROR);
    p.run();
    let mut rx = req.body.take().unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![InboundFrame::Reset(crate::http3::H3_NO_ERROR)]
    );
    let told = std::iter::from_fn(|| p.sc.events.try_recv().ok())
        .any(|e| matches!(e, H3Event::StreamReset { stream_id, .. } if stream_id == req.stream_id));
    assert!(!told, "the handler was told to stop");
    respond(&req, b"answer");
    drop((rx, req));
    p.run();
    let frames = drain(&mut stream.response);
    assert!(
        frames.contains(&InboundFrame::Body(Bytes::from_static(b"answer")))
            && frames.contains(&InboundFrame::Finished),
        "{frames:?}"
    );
    drop(stream);
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
}

#[test]
fn a_client_that_drops_a_response_asks_the_server_to_stop_at_once() {
    let mut p = Pair::new(Http3Settings::default());
    let stream = p.request("GET", false).unwrap();
    p.run();
    let req = p.next_request();
    req.response
        .try_send(OutboundFrame::Headers {
            headers: headers(&[(":status", "200")]),
            fin: false,
        })
        .unwrap();
    p.run();
    // The client no longer wants the answer: no grace on this side.
    drop(stream.response);
    p.run();
    assert_eq!(
        p.cc.handle().open_streams(),
        0,
        "the client kept the stream"
    );
    drop(req);
    p.run();
}

#[test]
fn a_request_whose_end_never_comes_is_stopped_after_the_grace() {
    // The handler answered and dropped the body; the client neither ends
    // nor resets its request. After the grace the server asks it to stop
    // (H3_NO_ERROR), and the stream's entry goes.
    let mut p = Pair::new(Http3Settings::default());
    let mut stream = p.request("POST", true).unwrap();
    p.run();
    let mut req = p.next_request();
    drop(req.body.take());
    respond(&req, b"answer");
    drop(req);
    p.run();
    std::thread::sleep(super::streams::UNWANTED_GRACE + std::time::Duration::from_millis(100));
    p.run();
    let frames = drain(&mut stream.response);
    assert!(
        frames.contains(&InboundFrame::Finished)
            && !frames.iter().any(|f| matches!(f, InboundFrame::Reset(_))),
        "{frames:?}"
    );
    // The server side let go of the stream without the client's end.
    assert_eq!(p.sc.handle().open_streams(), 0);
    drop(stream);
    p.run();
}

#[test]
fn a_response_reset_by_the_server_leaves_no_entry() {
    let mut p = Pair::new(Http3Settings::default());
    let mut stream = p.request("GET", false).unwrap();
    p.run();
    let req = p.next_request();
    req.response.try_send(OutboundFrame::Reset(0x42)).unwrap();
    drop(req);
    p.run();
    assert_eq!(drain(&mut stream.response), vec![InboundFrame::Reset(0x42)]);
    drop(stream);
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
}

#[test]
fn a_dropped_response_sender_resets_and_leaves_no_entry() {
    let mut p = Pair::new(Http3Settings::default());
    let mut stream = p.request("GET", false).unwrap();
    p.run();
    drop(p.next_request());
    p.run();
    assert_eq!(
        drain(&mut stream.response),
        vec![InboundFrame::Reset(H3_REQUEST_CANCELLED)]
    );
    drop(stream);
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
}

#[test]
fn after_goaway_a_new_request_is_refused_and_the_server_closes_once_idle() {
    let mut p = Pair::new(Http3Settings::default());
    let mut first = p.request("GET", false).unwrap();
    p.run();
    let req = p.next_request();
    // GOAWAY and a new request cross on the wire.
    p.sc.handle().goaway();
    let handle = p.cc.handle();
    let mut late = std::pin::pin!(handle.send_request(
        headers(&[(":method", "GET"), (":scheme", "https"), (":path", "/late")]),
        false
    ));
    assert!(poll_once(late.as_mut()).is_pending());
    p.run();
    let mut late = match poll_once(late.as_mut()) {
        Poll::Ready(Ok(s)) => s,
        other => panic!("the request was not sent: {other:?}"),
    };
    assert_eq!(
        drain(&mut late.response),
        vec![InboundFrame::Reset(H3_REQUEST_REJECTED)]
    );
    // The request in flight is still answered.
    assert!(!p.server.is_closed());
    respond(&req, b"done");
    drop(req);
    p.run();
    assert!(drain(&mut first.response).contains(&InboundFrame::Finished));
    drop((first, late));
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
    // After the linger the server closes by itself, the client idle.
    std::thread::sleep(Duration::from_millis(40));
    p.run();
    assert!(
        p.server.is_closed() || p.server.is_draining(),
        "the server closes a going-away idle connection"
    );
    // Gracefully, whichever side's idle check ran first (ours close too
    // once told to go away and idle).
    assert_eq!(
        p.server
            .local_error()
            .or(p.server.peer_error())
            .map(|e| e.error_code),
        Some(crate::http3::H3_NO_ERROR)
    );
    // And a client told to go away refuses new requests itself.
    assert!(matches!(
        p.request("GET", false),
        Err(H3Error::GoingAway) | Err(H3Error::ConnectionClosed)
    ));
}

#[test]
fn a_slow_reader_bounds_what_the_driver_buffers() {
    let h3 = Http3Settings {
        stream_channel_capacity: 4,
        ..Http3Settings::default()
    };
    let mut p = Pair::new(h3);
    let mut stream = p.request("GET", false).unwrap();
    p.run();
    let req = p.next_request();
    req.response
        .try_send(OutboundFrame::Headers {
            headers: headers(&[(":status", "200")]),
            fin: false,
        })
        .unwrap();
    let chunk = Bytes::from(vec![7u8; 60_000]);
    let mut queued = 0usize;
    // The server keeps writing while the client reads nothing.
    for _ in 0..200 {
        while req
            .response
            .try_send(OutboundFrame::Body(chunk.clone(), false))
            .is_ok()
        {
            queued += chunk.len();
        }
        p.run();
    }
    let (inbound, _) = p.cc.handle().peak_buffered();
    let (_, outbound) = p.sc.handle().peak_buffered();
    // Client side: at most the channel's frames of at most one read buffer.
    assert!(inbound <= 4 * 65536, "client buffered {inbound}");
    // Server side: the channel plus the frame quiche holds back.
    assert!(outbound <= 5 * 60_000, "server buffered {outbound}");
    assert!(
        queued < 8 << 20,
        "the writer was held back: queued {queued}"
    );
    // Reading frees room and the transfer goes on.
    let before = queued;
    for _ in 0..20 {
        drain(&mut stream.response);
        p.run();
        while req
            .response
            .try_send(OutboundFrame::Body(chunk.clone(), false))
            .is_ok()
        {
            queued += chunk.len();
        }
    }
    assert!(queued > before, "reading lets the writer go on");
}

#[test]
fn plugin_chosen_codes_beyond_varint_range_do_not_panic() {
    let mut p = Pair::new(Http3Settings::default());
    let stream = p.request("POST", true).unwrap();
    p.run();
    let req = p.next_request();
    p.sc.handle().reset_stream(req.stream_id, u64::MAX);
    p.sc.handle().stop_sending(req.stream_id, 1 << 62);
    p.run();
    drop((req, stream));
    p.run();
    p.sc.handle().close(u64::MAX, &"x".repeat(10_000));
    p.run();
    assert!(p.server.is_closed() || p.server.is_draining());
    assert_eq!(
        p.client.peer_error().map(|e| e.error_code),
        Some(crate::http3::H3_INTERNAL_ERROR)
    );
}

#[test]
fn a_response_head_beyond_the_peers_limit_resets_only_that_stream() {
    let mut p = Pair::new(Http3Settings::default());
    let mut stream = p.request("GET", false).unwrap();
    p.run();
    let req = p.next_request();
    // The client allows 16 KiB (its max_header_list_size).
    let big = "v".repeat(20 * 1024);
    req.response
        .try_send(OutboundFrame::Headers {
            headers: headers(&[(":status", "200"), ("x-big", &big)]),
            fin: true,
        })
        .unwrap();
    drop(req);
    p.run();
    let frames = drain(&mut stream.response);
    assert!(
        matches!(frames.last(), Some(InboundFrame::Reset(_))),
        "{frames:?}"
    );
    drop(stream);
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
    // The connection still serves.
    let mut again = p.request("GET", false).unwrap();
    p.run();
    respond(&p.next_request(), b"ok");
    p.run();
    assert!(drain(&mut again.response).contains(&InboundFrame::Finished));
}

#[test]
fn a_request_whose_body_never_comes_is_cut_but_a_slow_handler_is_not() {
    let mut p = Pair::new(Http3Settings {
        stream_stall_timeout: Some(Duration::ZERO),
        ..Default::default()
    });
    // A GET the handler takes its time over: waiting on the application.
    let mut slow = p.request("GET", false).unwrap();
    p.run();
    let slow_req = p.next_request();
    // A POST whose body never comes: waiting on the peer.
    let mut stalled = p.request("POST", true).unwrap();
    p.run();
    let mut req = p.next_request();
    p.run();
    let mut rx = req.body.take().unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![InboundFrame::Reset(H3_REQUEST_CANCELLED)]
    );
    let reset = std::iter::from_fn(|| p.sc.events.try_recv().ok()).any(|e| {
        matches!(e, H3Event::StreamReset { stream_id, code }
            if stream_id == req.stream_id && code == H3_REQUEST_CANCELLED)
    });
    assert!(reset, "the application is told");
    assert!(drain(&mut stalled.response).contains(&InboundFrame::Reset(H3_REQUEST_CANCELLED)));
    // The slow handler answers in the end, and the answer arrives.
    respond(&slow_req, b"late");
    p.run();
    let frames = drain(&mut slow.response);
    assert!(frames.contains(&InboundFrame::Finished), "{frames:?}");
    drop((rx, req, slow_req, slow, stalled));
    p.run();
    assert_eq!(p.table_sizes(), (0, 0));
}

#[test]
fn an_application_that_falls_behind_holds_the_peer_back_instead_of_queueing_events() {
    use crate::http3::controller::EVENT_BACKLOG;
    let mut p = Pair::new(Http3Settings::default());
    let handle = p.cc.handle();
    // Requests opened and reset as fast as credit comes back, while the
    // server's application takes no event.
    let mut opened = 0;
    let mut stalled = 0;
    while opened < 3 * EVENT_BACKLOG && stalled < 3 {
        let mut fut = std::pin::pin!(handle.send_request(
            headers(&[
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", "/"),
            ]),
            true,
        ));
        let mut got = None;
        for _ in 0..3 {
            if let Poll::Ready(r) = poll_once(fut.as_mut()) {
                got = Some(r);
                break;
            }
            p.run();
        }
        match got {
            Some(Ok(stream)) => {
                stalled = 0;
                opened += 1;
                if let Some(body) = stream.body {
                    let _ = body.try_send(OutboundFrame::Reset(H3_REQUEST_CANCELLED));
                }
                p.run();
            }
            _ => stalled += 1,
        }
    }
    let queued = p.sc.events.len();
    assert!(
        queued <= EVENT_BACKLOG + 8,
        "{queued} events queued for an application that takes none"
    );
    assert!(opened < 3 * EVENT_BACKLOG, "the peer was never held back");
    // The application catches up: the driver reads again.
    let mut taken = 0;
    loop {
        let mut next = std::pin::pin!(p.sc.next_event());
        match poll_once(next.as_mut()) {
            Poll::Ready(Some(_)) => taken += 1,
            _ => break,
        }
    }
    assert!(taken >= queued);
    p.run();
    assert!(
        !p.sc.events.is_empty(),
        "reading resumed once the events were taken"
    );
}

#[test]
fn frames_dropped_with_a_reset_stream_give_their_bytes_back() {
    let mut p = Pair::new(Http3Settings::default());
    let stream = p.request("GET", false).unwrap();
    p.run();
    let req = p.next_request();
    req.response
        .try_send(OutboundFrame::Headers {
            headers: headers(&[(":status", "200")]),
            fin: false,
        })
        .unwrap();
    // Queued and never sent: the client resets first.
    for _ in 0..10 {
        req.response
            .try_send(OutboundFrame::Body(
                Bytes::from(vec![7u8; 64 * 1024]),
                false,
            ))
            .unwrap();
    }
    let shared = p.sc.handle().shared.clone();
    assert_eq!(
        shared
            .outbound_buffered
            .load(std::sync::atomic::Ordering::Relaxed),
        640 * 1024
    );
    p.cc.handle()
        .stop_sending(stream.stream_id, H3_REQUEST_CANCELLED);
    p.run();
    drop((req, stream));
    p.run();
    assert_eq!(
        shared
            .outbound_buffered
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "bytes of dropped frames still counted"
    );
    assert_eq!(p.table_sizes(), (0, 0));
}

#[test]
fn a_header_section_that_never_completes_is_cut() {
    let mut p = Pair::new(Http3Settings {
        stream_stall_timeout: Some(Duration::ZERO),
        ..Default::default()
    });
    // HEADERS announcing 100 bytes, then only 5 of them, on a request
    // stream the client's driver does not use.
    p.client
        .stream_send(40, &[0x01, 0x40, 100, 0, 0, 0xd1, 0xd7, 0x50], false)
        .unwrap();
    p.run();
    // Reset by the server: gone on the client, or still showing the reset.
    let mut buf = [0u8; 64];
    let got = p.client.stream_recv(40, &mut buf).err();
    assert!(
        matches!(
            got,
            Some(quiche::Error::InvalidStreamState(_))
                | Some(quiche::Error::StreamReset(
                    crate::http3::H3_REQUEST_INCOMPLETE
                ))
        ),
        "{got:?}"
    );
    assert!(!p.server.is_closed(), "only the stream is cut");
    // Without the timeout the same stream stays open, waiting.
    let mut q = Pair::new(Http3Settings {
        stream_stall_timeout: None,
        ..Default::default()
    });
    q.client
        .stream_send(40, &[0x01, 0x40, 100, 0, 0, 0xd1, 0xd7, 0x50], false)
        .unwrap();
    q.run();
    assert_eq!(
        q.client.stream_recv(40, &mut buf).err(),
        Some(quiche::Error::Done)
    );
}

#[test]
fn rapid_reset_leaves_no_entry_in_any_map() {
    let mut p = Pair::new(Http3Settings::default());
    for round in 0..20 {
        for _ in 0..50 {
            let stream = p.request("POST", true).unwrap();
            let body = stream.body.unwrap();
            body.try_send(OutboundFrame::Reset(H3_REQUEST_CANCELLED))
                .unwrap();
        }
        p.run();
        // The server's application takes its events (and so stops each
        // reset request's work).
        loop {
            let mut next = std::pin::pin!(p.sc.next_event());
            if !matches!(poll_once(next.as_mut()), Poll::Ready(Some(_))) {
                break;
            }
        }
        p.run();
        let entries = (p.cd.stream_entries(), p.sd.stream_entries());
        assert!(
            entries.0 <= 60 && entries.1 <= 60,
            "round {round}: {entries:?} entries left (client, server)"
        );
    }
    p.run();
    assert_eq!((p.cd.stream_entries(), p.sd.stream_entries()), (0, 0));
}

#[test]
fn requests_reset_before_their_headers_give_their_stream_credit_back() {
    // Credit for 100 concurrent requests; 300 opened and reset at once,
    // with nothing sent on them (as a client cancelling in the same turn):
    // the server must close its side of each, or the credit never returns.
    let mut p = Pair::new(Http3Settings {
        stream_stall_timeout: None,
        ..Default::default()
    });
    for k in 0..300u64 {
        let id = 4 * k;
        let mut opened = false;
        for _ in 0..5 {
            if p.client.stream_send(id, b"", false).is_ok() {
                opened = true;
                break;
            }
            p.run();
        }
        assert!(opened, "request stream {id} never got credit");
        p.client
            .stream_shutdown(id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED)
            .unwrap();
        p.run();
    }
    assert!(!p.server.is_closed());
    assert_eq!(p.sd.stream_entries(), 0);
}

#[test]
fn the_peers_reset_unidirectional_streams_are_forgotten() {
    let mut p = Pair::new(Http3Settings::default());
    let before = p.sd.peer_uni_count();
    for k in 0..50u64 {
        // Client unidirectional ids past its own control and QPACK streams.
        let id = 4 * (k + 8) + 2;
        p.client.stream_send(id, &[0x21], false).unwrap();
        p.client
            .stream_shutdown(id, quiche::Shutdown::Write, 0x10c)
            .unwrap();
        p.run();
    }
    p.run();
    assert!(!p.server.is_closed());
    assert!(
        p.sd.peer_uni_count() <= before + 1,
        "{} of the peer's unidirectional streams still tracked",
        p.sd.peer_uni_count()
    );
}

/// A peer that sends anything on any stream: frames of every type (valid,
/// reserved, made up) with true or false lengths, on a fresh request
/// stream, on its own control stream and on a new unidirectional stream
/// of any type. The server's driver must close the connection or reset the
/// stream, never panic. A short run here; `PROPTEST_CASES=N` for more.
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::quic::varint;

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        let ty = prop_oneof![
            Just(0x0u64),
            Just(0x1),
            Just(0x3),
            Just(0x4),
            Just(0x5),
            Just(0x7),
            Just(0xd),
            Just(0x21),
            0u64..(1 << 62),
        ];
        let payload = proptest::collection::vec(any::<u8>(), 0..64);
        // The true length most of the time, else any.
        let len = prop_oneof![3 => Just(None), 1 => (0u64..(1 << 62)).prop_map(Some)];
        (ty, payload, len).prop_map(|(ty, payload, len)| {
            let mut f = Vec::new();
            let _ = varint::write(&mut f, ty);
            let _ = varint::write(&mut f, len.unwrap_or(payload.len() as u64));
            f.extend_from_slice(&payload);
            f
        })
    }

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(48)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn a_peer_sending_anything_never_panics_the_driver(
            target in 0usize..3,
            uni_type in prop_oneof![Just(0x0u64), Just(0x1), Just(0x2), Just(0x3), 0u64..(1 << 62)],
            frames in proptest::collection::vec(frame(), 0..6),
            fin in any::<bool>(),
        ) {
            let mut p = Pair::new(Http3Settings::default());
            let mut bytes = Vec::new();
            // Client streams the client's driver does not use: a request
            // stream further up (within the stream limit), and a fresh
            // unidirectional one; or its own control stream (2), already
            // carrying its SETTINGS.
            let id = match target {
                0 => 40,
                1 => 2,
                // (quiche's own grease stream may have taken 14).
                _ => {
                    let _ = varint::write(&mut bytes, uni_type);
                    30
                }
            };
            for f in &frames {
                bytes.extend_from_slice(f);
            }
            // Accepted whole: the case reaches the server.
            let sent = p.client.stream_send(id, &bytes, fin);
            prop_assert!(bytes.is_empty() && !fin || sent == Ok(bytes.len()), "{sent:?}");
            p.run();
            // Whatever it did, the server holds at most the one stream.
            prop_assert!(p.server.is_closed() || p.sd.stream_count() <= 1);
        }
    }
}
