//! HTTP/3: the built-in site and test handlers served by `H3Driver`, checked
//! with our own client and with hyperium's h3 over quinn.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tq_e2e::{init_tracing, payload, sha256, H3App, H3QuinnClient, H3TestServer};
use tq_host::builtin::WelcomePage;
use tq_host::http3::{
    headers, Http3Settings, InboundFrame, OutboundFrame, RequestBody, RequestHandler, ResponseBody,
    H3_NO_ERROR,
};
use tq_host::quic::QuicSettings;

const SIZES: [usize; 4] = [0, 1024, 1 << 20, 64 << 20];

async fn page_server() -> H3TestServer {
    H3TestServer::start(
        QuicSettings::default(),
        Http3Settings::default(),
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_gets_and_posts_0_b_to_64_mib() {
    init_tracing();
    let server = page_server().await;
    let client = server.client().await;
    let page = client.request("GET", "/", None).await.expect("GET /");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("tq-host is running"));
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    for (i, size) in SIZES.into_iter().enumerate() {
        let got = client
            .request("GET", &format!("/bytes/{size}"), None)
            .await
            .unwrap_or_else(|e| panic!("GET {size}: {e}"));
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), size);
        assert_eq!(
            sha256(&got.body),
            sha256(&vec![b'x'; size]),
            "GET body of {size} bytes"
        );

        let data = Bytes::from(payload(size, i as u64));
        let echoed = client
            .request("POST", "/echo", Some(data.clone()))
            .await
            .unwrap_or_else(|e| panic!("POST {size}: {e}"));
        assert_eq!(echoed.status, 200);
        assert_eq!(
            sha256(&echoed.body),
            sha256(&data),
            "POST echo of {size} bytes"
        );
    }
    // The benchmarks' upload: the body is read to its end and counted.
    tq_e2e::assert_discards(&client, &[0, 1, 5 << 20]).await;
    let missing = client.request("GET", "/nope", None).await.unwrap();
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_over_quinn_gets_and_posts_0_b_to_64_mib() {
    init_tracing();
    let server = page_server().await;
    let mut client = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .expect("h3-quinn connects");
    let (status, body, _) = client.request("GET", "/", None).await.expect("GET /");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("tq-host is running"));
    for (i, size) in SIZES.into_iter().enumerate() {
        let (status, body, _) = client
            .request("GET", &format!("/bytes/{size}"), None)
            .await
            .unwrap_or_else(|e| panic!("GET {size}: {e}"));
        assert_eq!(status, 200);
        assert_eq!(
            sha256(&body),
            sha256(&vec![b'x'; size]),
            "GET body of {size} bytes"
        );

        let data = Bytes::from(payload(size, 10 + i as u64));
        let (status, body, _) = client
            .request("POST", "/echo", Some(data.clone()))
            .await
            .unwrap_or_else(|e| panic!("POST {size}: {e}"));
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), sha256(&data), "POST echo of {size} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_over_ten_connections_are_all_answered() {
    init_tracing();
    let server = page_server().await;
    let mut conns = tokio::task::JoinSet::new();
    for c in 0..10 {
        let client = server.client().await;
        conns.spawn(async move {
            let client = Arc::new(client);
            let mut reqs = tokio::task::JoinSet::new();
            for r in 0..100 {
                let client = client.clone();
                reqs.spawn(async move {
                    let n = 100 + c * 100 + r;
                    let resp = client
                        .request("GET", &format!("/bytes/{n}"), None)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    anyhow::ensure!(
                        resp.status == 200 && resp.body.len() == n,
                        "request {c}/{r}: {}",
                        resp.status
                    );
                    anyhow::Ok(())
                });
            }
            let mut ok = 0;
            while let Some(r) = reqs.join_next().await {
                r??;
                ok += 1;
            }
            anyhow::Ok(ok)
        });
    }
    let mut total = 0;
    while let Some(r) = conns.join_next().await {
        total += r.expect("panicked").expect("a request failed");
    }
    assert_eq!(total, 1000);
}

/// Echoes the body and answers with the request's trailers plus its own.
struct TrailerEcho;

impl RequestHandler for TrailerEcho {
    async fn handle(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
        let mut body = req.into_body();
        let data = body.bytes(1 << 20).await.unwrap_or_default();
        let mut t = http::HeaderMap::new();
        for h in body.trailers() {
            use tq_host::http3::NameValue;
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name()),
                http::HeaderValue::from_bytes(h.value()),
            ) {
                t.insert(n, v);
            }
        }
        t.insert("x-body-length", http::HeaderValue::from(data.len()));
        let (writer, out) = ResponseBody::channel(2);
        tokio::spawn(async move {
            let _ = writer.write(data).await;
            let _ = writer.trailers(t).await;
        });
        http::Response::new(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_travel_both_ways() {
    init_tracing();
    let server = H3TestServer::start(
        QuicSettings::default(),
        Http3Settings::default(),
        H3App::Handler(Arc::new(TrailerEcho)),
    )
    .await;
    let client = server.client().await;
    let resp = client
        .request_with(
            "POST",
            "/",
            &[],
            Some(Bytes::from_static(b"hello")),
            headers(&[("x-checksum", "abc123")]),
        )
        .await
        .expect("request with trailers");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello");
    let t: Vec<(String, String)> = resp
        .trailers
        .iter()
        .map(|h| {
            use tq_host::http3::NameValue;
            (
                String::from_utf8_lossy(h.name()).into_owned(),
                String::from_utf8_lossy(h.value()).into_owned(),
            )
        })
        .collect();
    assert!(t.contains(&("x-checksum".into(), "abc123".into())), "{t:?}");
    assert!(t.contains(&("x-body-length".into(), "5".into())), "{t:?}");

    // h3 over quinn reads our trailers too.
    let mut q = H3QuinnClient::connect(server.addr, &server.cert.cert)
        .await
        .unwrap();
    let (status, body, trailers) = q
        .request("POST", "/", Some(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(
        trailers.expect("trailers").get("x-body-length").unwrap(),
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_then_the_final_response() {
    init_tracing();
    let (server, mut controllers) =
        H3TestServer::start_raw(QuicSettings::default(), Http3Settings::default()).await;
    let serve = tokio::spawn(async move {
        let mut c = controllers.recv().await.expect("a connection");
        while let Some(ev) = c.next_event().await {
            if let tq_host::http3::H3Event::IncomingRequest(req) = ev {
                let r = req.response;
                r.send_headers(
                    headers(&[(":status", "103"), ("link", "</style.css>; rel=preload")]),
                    false,
                )
                .await
                .unwrap();
                r.send_headers(headers(&[(":status", "200")]), false)
                    .await
                    .unwrap();
                r.send_body(Bytes::from_static(b"done"), true)
                    .await
                    .unwrap();
            }
        }
    });
    let client = server.client().await;
    let resp = client.request("GET", "/", None).await.expect("response");
    assert_eq!(resp.informational.len(), 1, "one 103");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"done");
    let hint = &resp.informational[0];
    use tq_host::http3::NameValue;
    assert!(hint
        .iter()
        .any(|h| h.name() == b":status" && h.value() == b"103"));
    assert!(hint.iter().any(|h| h.name() == b"link"));
    serve.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_mid_body_reaches_the_server_and_frees_the_stream() {
    init_tracing();
    let quic = QuicSettings {
        initial_max_streams_bidi: 2,
        ..Default::default()
    };
    let (server, mut controllers) = H3TestServer::start_raw(quic, Http3Settings::default()).await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let serve = tokio::spawn(async move {
        let mut c = controllers.recv().await.expect("a connection");
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(ev) = c.next_event().await {
            if let tq_host::http3::H3Event::IncomingRequest(req) = ev {
                let seen_tx = seen_tx.clone();
                tasks.spawn(async move {
                    // Read the body; report its first bytes and how it ended.
                    let mut body = req.body.expect("a body");
                    let mut end = "finished";
                    let mut first = true;
                    while let Some(f) = body.recv().await {
                        match f {
                            InboundFrame::Body(_) if first => {
                                first = false;
                                let _ = seen_tx.send(None);
                            }
                            InboundFrame::Reset(code) => {
                                let _ = seen_tx.send(Some(code));
                                end = "reset";
                                break;
                            }
                            InboundFrame::Finished => break,
                            _ => {}
                        }
                    }
                    if end == "finished" {
                        let _ = req
                            .response
                            .send_headers(headers(&[(":status", "200")]), true)
                            .await;
                    }
                });
            }
        }
    });
    let client = server.client().await;
    let stream = client
        .handle()
        .send_request(tq_e2e::request_head("POST", "/"), true)
        .await
        .expect("request");
    let body = stream.body.expect("body sender");
    body.send_body(Bytes::from(vec![1u8; 10_000]), false)
        .await
        .unwrap();
    // Reset only once the server is reading the body, mid-way.
    let first = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("body arrives");
    assert_eq!(first, Some(None));
    body.send(OutboundFrame::Reset(0x10c)).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the server sees the reset")
        .unwrap();
    assert_eq!(code, Some(0x10c));

    // Only two streams may be open at once: five more requests succeed only
    // if the reset one was freed.
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.request("POST", "/", Some(Bytes::from_static(b"x"))),
        )
        .await
        .expect("not stuck on a leaked stream")
        .expect("request");
        assert_eq!(r.status, 200);
    }
    serve.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_closes_with_h3_no_error() {
    init_tracing();
    let h3 = Http3Settings {
        max_requests_per_connection: Some(3),
        ..Default::default()
    };
    let server = H3TestServer::start(
        QuicSettings::default(),
        h3,
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await;
    let client = server.client().await;
    for _ in 0..3 {
        assert_eq!(
            client
                .request("GET", "/bytes/10", None)
                .await
                .unwrap()
                .status,
            200
        );
    }
    let outcome = tokio::time::timeout(Duration::from_secs(5), client.connection().closed())
        .await
        .expect("the server closes the connection");
    // After the server's GOAWAY, whichever side finds itself idle first
    // closes, with H3_NO_ERROR.
    assert!(client.handle().is_going_away());
    let close = outcome
        .peer_close
        .clone()
        .or(outcome.local_close.clone())
        .expect("a close");
    assert!(close.is_app);
    assert_eq!(close.code, H3_NO_ERROR, "{}", outcome.describe());
    let err = client
        .request("GET", "/", None)
        .await
        .expect_err("no fourth request")
        .to_string();
    assert!(err.contains("GOAWAY") || err.contains("closed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_lets_requests_in_flight_finish_refuses_new_ones_and_closes() {
    init_tracing();
    let mut server = page_server().await;
    let client = Arc::new(server.client().await);
    let server_handle = server
        .handles
        .recv()
        .await
        .expect("server side of the connection");

    // A large download is in flight when the server sends GOAWAY.
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request("GET", &format!("/bytes/{}", 32 << 20), None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server_handle.goaway();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !client.handle().is_going_away() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client hears the GOAWAY");

    let refused = client.request("GET", "/", None).await;
    assert!(
        refused.is_err(),
        "a new request after GOAWAY must be refused"
    );
    let done = in_flight
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(done.body.len(), 32 << 20);

    let outcome = tokio::time::timeout(Duration::from_secs(5), client.connection().closed())
        .await
        .expect("the connection closes by itself");
    let close = outcome
        .peer_close
        .clone()
        .or(outcome.local_close.clone())
        .expect("a close");
    assert_eq!(close.code, H3_NO_ERROR, "{}", outcome.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_keeps_the_servers_buffers_bounded() {
    init_tracing();
    let mut server = page_server().await;
    let client = server.client().await;
    let server_handle = server.handles.recv().await.expect("server connection");
    let stream = client
        .handle()
        .send_request(
            tq_e2e::request_head("GET", &format!("/bytes/{}", 64 << 20)),
            false,
        )
        .await
        .unwrap();
    let mut rx = stream.response;
    let mut total = 0usize;
    let mut chunks = 0usize;
    while let Some(f) = rx.recv().await {
        match f {
            InboundFrame::Body(b) => {
                total += b.len();
                chunks += 1;
                // Slow: a pause every 16 chunks (about 1 MiB), ~1.5 s in all.
                if chunks.is_multiple_of(16) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            InboundFrame::Finished => break,
            InboundFrame::Headers(_) => {}
            InboundFrame::Reset(c) => panic!("reset {c:#x}"),
        }
    }
    assert_eq!(total, 64 << 20);
    let (server_in, server_out) = server_handle.peak_buffered();
    let (client_in, _) = client.handle().peak_buffered();
    // The server driver holds at most its stream channel (16 frames of at
    // most 64 KiB) plus the frame being written; the client at most its
    // channel. 64 MiB would have piled up without back-pressure.
    let bound = (Http3Settings::default().stream_channel_capacity + 1) * 64 * 1024;
    assert!(
        server_out <= bound,
        "server buffered {server_out} bytes (bound {bound})"
    );
    assert!(
        client_in <= bound,
        "client buffered {client_in} bytes (bound {bound})"
    );
    assert_eq!(server_in, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_refused() {
    init_tracing();
    let h3 = Http3Settings {
        max_header_list_size: 4096,
        ..Default::default()
    };
    let server = H3TestServer::start(
        QuicSettings::default(),
        h3,
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await;
    let client = server.client().await;
    // Let the server's SETTINGS arrive so the client knows the limit.
    assert_eq!(client.request("GET", "/", None).await.unwrap().status, 200);
    let big = "v".repeat(8000);
    let err = client
        .request_with("GET", "/", &[("x-big", &big)], None, Vec::new())
        .await
        .expect_err("over the server's limit")
        .to_string();
    assert!(err.contains("closed"), "{err}");
    // quiche's server closes the connection with H3_EXCESSIVE_LOAD.
    let outcome = tokio::time::timeout(Duration::from_secs(5), client.connection().closed())
        .await
        .expect("closed");
    let close = outcome.peer_close.clone().expect("closed by the server");
    assert_eq!(
        close.code,
        tq_host::http3::H3_EXCESSIVE_LOAD,
        "{}",
        outcome.describe()
    );
    // The server still serves other connections.
    let other = server.client().await;
    assert_eq!(other.request("GET", "/", None).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_stream_limit_wait_instead_of_failing() {
    init_tracing();
    let quic = QuicSettings {
        initial_max_streams_bidi: 2,
        ..Default::default()
    };
    let server = H3TestServer::start(
        quic,
        Http3Settings::default(),
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await;
    let client = Arc::new(server.client().await);
    let mut reqs = tokio::task::JoinSet::new();
    for i in 0..20 {
        let client = client.clone();
        reqs.spawn(async move {
            client
                .request("GET", &format!("/bytes/{}", 1000 + i), None)
                .await
        });
    }
    let mut ok = 0;
    while let Some(r) = reqs.join_next().await {
        let r = r.unwrap().expect("every request is answered");
        assert_eq!(r.status, 200);
        ok += 1;
    }
    assert_eq!(ok, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_requests_is_closed_after_the_first_request_timeout() {
    init_tracing();
    let h3 = Http3Settings {
        first_request_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let server = H3TestServer::start(
        QuicSettings::default(),
        h3,
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await;
    let client = server.client().await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), client.connection().closed())
        .await
        .expect("closed by the server");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let close = outcome.peer_close.clone().expect("the server closed");
    assert_eq!(close.code, H3_NO_ERROR, "{}", outcome.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_http_datagrams_reach_the_application() {
    init_tracing();
    let quic = QuicSettings {
        enable_datagrams: true,
        ..Default::default()
    };
    let h3 = Http3Settings {
        enable_extended_connect: true,
        ..Default::default()
    };
    let (server, mut controllers) = H3TestServer::start_raw(quic.clone(), h3.clone()).await;
    let (saw_settings_tx, saw_settings) = tokio::sync::oneshot::channel();
    let serve = tokio::spawn(async move {
        let mut c = controllers.recv().await.expect("a connection");
        let handle = c.handle();
        let mut saw_settings_tx = Some(saw_settings_tx);
        let mut keep = Vec::new();
        while let Some(ev) = c.next_event().await {
            match ev {
                tq_host::http3::H3Event::SettingsReceived { settings } => {
                    if let Some(t) = saw_settings_tx.take() {
                        let _ = t.send(settings);
                    }
                }
                tq_host::http3::H3Event::IncomingRequest(req) => {
                    let _ = req
                        .response
                        .send_headers(headers(&[(":status", "200")]), false)
                        .await;
                    keep.push(req); // keep the stream open for datagrams
                }
                tq_host::http3::H3Event::Datagram { stream_id, payload } => {
                    let mut back = b"echo:".to_vec();
                    back.extend_from_slice(&payload);
                    handle.send_datagram(stream_id, back);
                }
                _ => {}
            }
        }
    });

    // A client with its own controller, to see datagram events.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server.addr).await.unwrap();
    let (driver, mut controller) = tq_host::http3::ClientH3Driver::new_client(h3);
    let params = tq_host::quic::ConnectionParams::new_client(quic).ca_file(&server.cert.paths.cert);
    let _conn = tq_host::quic::connect_with_config(
        socket,
        Some("localhost"),
        &params,
        driver,
        tq_host::metrics::DefaultMetrics::default(),
    )
    .await
    .expect("connect");
    let handle = controller.handle();
    let stream = handle
        .send_request(tq_e2e::request_head("GET", "/"), true)
        .await
        .expect("request");
    let settings = tokio::time::timeout(Duration::from_secs(5), saw_settings)
        .await
        .expect("server saw SETTINGS")
        .unwrap();
    // SETTINGS_MAX_FIELD_SECTION_SIZE (0x6) is always sent by quiche.
    assert!(settings.iter().any(|(id, _)| *id == 0x6), "{settings:?}");

    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            handle.send_datagram(stream.stream_id, Bytes::from_static(b"ping"));
            let wait = tokio::time::sleep(Duration::from_millis(100));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    ev = controller.next_event() => match ev {
                        Some(tq_host::http3::H3Event::Datagram { stream_id, payload }) => return (stream_id, payload),
                        Some(_) => {}
                        None => panic!("connection ended"),
                    },
                    () = &mut wait => break, // datagrams may be lost: send again
                }
            }
        }
    })
    .await
    .expect("a datagram comes back");
    assert_eq!(got.0, stream.stream_id);
    assert_eq!(&got.1[..], b"echo:ping");
    serve.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_response_sender_before_fin_resets_the_stream() {
    init_tracing();
    let (server, mut controllers) =
        H3TestServer::start_raw(QuicSettings::default(), Http3Settings::default()).await;
    let serve = tokio::spawn(async move {
        let mut c = controllers.recv().await.expect("a connection");
        while let Some(ev) = c.next_event().await {
            if let tq_host::http3::H3Event::IncomingRequest(req) = ev {
                // Start a response, then give up on it.
                let _ = req
                    .response
                    .send_headers(headers(&[(":status", "200")]), false)
                    .await;
                let _ = req
                    .response
                    .send_body(Bytes::from_static(b"partial"), false)
                    .await;
                drop(req.response);
            }
        }
    });
    let client = server.client().await;
    let err = client
        .request("GET", "/", None)
        .await
        .expect_err("the response was abandoned")
        .to_string();
    assert!(err.contains("reset") && err.contains("0x10c"), "{err}");
    // The connection survives a reset stream.
    assert!(!client.connection().is_closed());
    serve.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_body_receiver_stops_the_upload_and_the_early_answer_stands() {
    init_tracing();
    let (server, mut controllers) =
        H3TestServer::start_raw(QuicSettings::default(), Http3Settings::default()).await;
    let serve = tokio::spawn(async move {
        let mut c = controllers.recv().await.expect("a connection");
        while let Some(ev) = c.next_event().await {
            if let tq_host::http3::H3Event::IncomingRequest(req) = ev {
                // Refuse the body (STOP_SENDING) and answer at once.
                drop(req.body);
                let _ = req
                    .response
                    .send_headers(headers(&[(":status", "413")]), true)
                    .await;
            }
        }
    });
    let client = server.client().await;
    let stream = client
        .handle()
        .send_request(tq_e2e::request_head("POST", "/upload"), true)
        .await
        .expect("request");
    let body = stream.body.expect("body sender");
    // The upload stops being accepted once the server's STOP_SENDING lands:
    // far less than 64 MiB goes out before the sender reports the stream gone.
    let mut sent = 0usize;
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        while sent < (64 << 20) {
            if body.send_body(chunk.clone(), false).await.is_err() {
                return true;
            }
            sent += chunk.len();
        }
        false
    })
    .await
    .expect("the upload ends");
    assert!(
        stopped,
        "the client sent all 64 MiB: no STOP_SENDING took effect"
    );
    let mut rx = stream.response;
    match rx.recv().await {
        Some(InboundFrame::Headers(h)) => {
            use tq_host::http3::NameValue;
            assert!(h
                .iter()
                .any(|h| h.name() == b":status" && h.value() == b"413"));
        }
        other => panic!("expected the 413 head, got {other:?}"),
    }

    // Through the H3Client too: the early answer is returned, not an error.
    let r = client
        .request("POST", "/upload", Some(Bytes::from(vec![1u8; 8 << 20])))
        .await
        .expect("the early answer stands");
    assert_eq!(r.status, 413);
    serve.abort();
}

/// A handler that never answers (but `/ok` at once), counting how many of
/// it are alive.
struct Stuck {
    live: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
}

struct LiveGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RequestHandler for Stuck {
    async fn handle(&self, req: http::Request<RequestBody>) -> http::Response<ResponseBody> {
        use std::sync::atomic::Ordering;
        if req.uri().path() == "/ok" {
            return http::Response::new("ok".into());
        }
        let n = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        let _guard = LiveGuard(self.live.clone());
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_stops_each_handler_so_live_ones_stay_within_the_stream_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    init_tracing();
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handler = Stuck {
        live: live.clone(),
        peak: peak.clone(),
    };
    let server = H3TestServer::start(
        QuicSettings::default(),
        Http3Settings::default(),
        H3App::Handler(Arc::new(handler)),
    )
    .await;
    // A bystander on its own connection, before and during the attack.
    let bystander = server.client().await;
    let before = tq_e2e::latencies(&bystander, "/ok", 300).await;
    let rss_before = tq_e2e::rss_kib();
    let client = server.client().await;
    // HEADERS then RESET_STREAM (and STOP_SENDING), as fast as stream
    // credit allows: each reset gives the credit back at once.
    const PAIRS: usize = 10_000;
    let attack = tokio::spawn(async move { tq_e2e::reset_pairs(&client, "/", PAIRS).await });
    let during = tq_e2e::latencies(&bystander, "/ok", 300).await;
    attack.await.unwrap();
    // Every handler ends once its reset arrives.
    tokio::time::timeout(Duration::from_secs(10), async {
        while live.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} handlers still alive after the resets",
            live.load(Ordering::Relaxed)
        )
    });
    let peak = peak.load(Ordering::Relaxed);
    let grown = tq_e2e::rss_kib().saturating_sub(rss_before);
    println!(
        "rapid reset vs native: {PAIRS} pairs, at most {peak} handlers alive at once; \
         RSS +{grown} KiB; bystander p99 {:?} before, {:?} during",
        tq_e2e::percentile(&before, 99),
        tq_e2e::percentile(&during, 99)
    );
    // The default limit is 100 concurrent streams; allow for resets in
    // flight between the client's and the server's view.
    assert!(peak <= 200, "{peak} handlers alive at once");
    // And the connection still serves.
    let after = server.client().await;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        after
            .handle()
            .send_request(tq_e2e::request_head("GET", "/"), false),
    )
    .await
    .expect("a new request is taken");
    assert!(r.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_capped_and_places_come_back() {
    init_tracing();
    let quic = QuicSettings {
        max_connections_per_address: 3,
        ..Default::default()
    };
    let server = H3TestServer::start(
        quic,
        Http3Settings::default(),
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = server.client().await;
        assert_eq!(c.request("GET", "/", None).await.unwrap().status, 200);
        held.push(c);
    }
    // A fourth from the same address is refused (its handshake times out).
    let impatient = tq_host::quic::ConnectionParams::new_client(QuicSettings {
        max_idle_timeout: Duration::from_millis(700),
        ..Default::default()
    })
    .ca_file(&server.cert.paths.cert);
    let fourth = tq_host::http3::H3Client::connect(
        server.addr,
        "localhost",
        &impatient,
        Http3Settings::default(),
    )
    .await;
    assert!(fourth.is_err(), "a fourth connection was admitted");
    assert!(server.metrics.snapshot().dropped_connection_limit > 0);
    // One closes: its place comes back.
    let gone = held.pop().unwrap();
    gone.handle().close(H3_NO_ERROR, "done");
    tokio::time::timeout(Duration::from_secs(5), gone.connection().closed())
        .await
        .expect("the connection closes");
    let mut again = None;
    for _ in 0..20 {
        if let Ok(c) = tq_host::http3::H3Client::connect(
            server.addr,
            "localhost",
            &impatient,
            Http3Settings::default(),
        )
        .await
        {
            again = Some(c);
            break;
        }
    }
    let again = again.expect("a place came back once a connection closed");
    assert_eq!(again.request("GET", "/", None).await.unwrap().status, 200);
}

/// How a slowloris request ended, as its client saw it.
#[derive(Debug, PartialEq)]
enum Ending {
    Reset(u64),
    Finished,
    Closed,
}

async fn ending(mut response: tq_host::http3::BodyReceiver) -> Ending {
    loop {
        match response.recv().await {
            Some(InboundFrame::Reset(code)) => return Ending::Reset(code),
            Some(InboundFrame::Finished) => return Ending::Finished,
            Some(_) => {}
            None => return Ending::Closed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_requests_are_cut_the_address_cap_holds_and_a_bystander_is_served() {
    use tq_host::http3::{H3Client, H3_REQUEST_CANCELLED};
    init_tracing();
    const CAP: usize = 20;
    const ATTEMPTS: usize = 200;
    const STREAMS: usize = 4;
    const STALL: Duration = Duration::from_secs(1);
    let server = H3TestServer::start(
        QuicSettings {
            max_connections_per_address: CAP,
            ..Default::default()
        },
        Http3Settings {
            stream_stall_timeout: Some(STALL),
            ..Default::default()
        },
        H3App::Handler(Arc::new(WelcomePage)),
    )
    .await;

    // The bystander, from 127.0.0.1, asks every 20 ms while the attack runs.
    let bystander = server.client().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let asking = tokio::spawn(async move {
        let (mut ok, mut failed) = (0usize, 0usize);
        let mut took = Vec::new();
        let mut stopped = stopped;
        while !*stopped.borrow_and_update() {
            let asked = std::time::Instant::now();
            match tokio::time::timeout(Duration::from_secs(5), bystander.request("GET", "/", None))
                .await
            {
                Ok(Ok(r)) if r.status == 200 => ok += 1,
                _ => failed += 1,
            }
            took.push(asked.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.sort();
        let p99 = took.get(took.len() * 99 / 100).copied().unwrap_or_default();
        (ok, failed, p99)
    });

    // The attack, from 127.0.0.2: connections that each open requests,
    // send one byte of body and never finish. (Their idle timeout must
    // outlast the stall timeout; refused ones give up after it.)
    let impatient = tq_host::quic::ConnectionParams::new_client(QuicSettings {
        max_idle_timeout: STALL * 4,
        ..Default::default()
    })
    .ca_file(&server.cert.paths.cert);
    let connector =
        Arc::new(tq_host::quic::Connector::new(impatient, Default::default()).expect("connector"));
    // Admitted attackers stay connected (asking GET / now and then) until
    // every attempt has reported, so no place frees up for a late one.
    let (hold_on, holding) = tokio::sync::watch::channel(true);
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..ATTEMPTS {
        let connector = connector.clone();
        let addr = server.addr;
        let report = report.clone();
        let mut holding = holding.clone();
        attackers.spawn(async move {
            let attack = async {
                let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.ok()?;
                let client = H3Client::connect_from(
                    &connector,
                    socket,
                    addr,
                    "localhost",
                    Default::default(),
                )
                .await
                .ok()?;
                let mut endings = Vec::new();
                let mut bodies = Vec::new();
                for _ in 0..STREAMS {
                    let stream = client
                        .handle()
                        .send_request(tq_e2e::request_head("POST", "/echo"), true)
                        .await
                        .ok()?;
                    let body = stream.body?;
                    body.send_body(Bytes::from_static(b"x"), false).await.ok()?;
                    bodies.push(body);
                    endings.push(stream.response);
                }
                let opened = std::time::Instant::now();
                let mut seen = Vec::new();
                for r in endings {
                    let e = tokio::time::timeout(Duration::from_secs(10), ending(r)).await;
                    seen.push((e.ok(), opened.elapsed()));
                }
                drop(bodies);
                Some((seen, client))
            };
            let Some((seen, client)) = attack.await else {
                let _ = report.send(None);
                return;
            };
            let _ = report.send(Some(seen));
            while *holding.borrow_and_update() {
                let _ = client.request("GET", "/", None).await;
                tokio::select! {
                    _ = holding.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        });
    }
    drop(report);
    let mut admitted = 0;
    for _ in 0..ATTEMPTS {
        let Some(seen) = reports.recv().await.expect("every attempt reports") else {
            continue;
        };
        admitted += 1;
        for (ending, after) in seen {
            assert_eq!(
                ending,
                Some(Ending::Reset(H3_REQUEST_CANCELLED)),
                "a stalled request ended otherwise"
            );
            assert!(after < STALL * 6, "a stalled request lived {after:?}");
        }
    }
    hold_on.send(false).unwrap();
    while attackers.join_next().await.is_some() {}
    stop.send(true).unwrap();
    let (ok, failed, p99) = asking.await.unwrap();
    println!(
        "slowloris: {admitted} of {ATTEMPTS} attacking connections admitted (cap {CAP}), \
         their {} requests all cut; bystander {ok} answered (p99 {p99:?}), {failed} failed",
        admitted * STREAMS
    );
    assert!(admitted > 0, "no attacker got in: the test proves nothing");
    assert!(admitted <= CAP, "{admitted} connections from one address");
    assert!(server.metrics.snapshot().dropped_connection_limit > 0);
    assert_eq!(failed, 0, "the bystander was refused or timed out");
    assert!(ok >= 10, "the bystander was served only {ok} times");
}
