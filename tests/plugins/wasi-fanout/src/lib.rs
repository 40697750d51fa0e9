//! Fans out: `GET /fanout?N&AUTHORITY` starts N outgoing requests to
//! `http://AUTHORITY/` at once, before waiting for any, then answers
//! `ok A limited L other O`: how many were answered, refused with
//! `connection-limit-reached`, or failed otherwise.

use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Fanout;

impl wasi::exports::http::incoming_handler::Guest for Fanout {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_default();
        let answer = match path
            .strip_prefix("/fanout?")
            .and_then(|q| q.split_once('&'))
        {
            Some((n, authority)) => fan_out(n.parse().unwrap_or(0), authority),
            None => "usage: /fanout?N&AUTHORITY".into(),
        };
        let resp = OutgoingResponse::new(Fields::new());
        let body = resp.body().expect("body");
        ResponseOutparam::set(out, Ok(resp));
        {
            let s = body.write().expect("stream");
            let _ = s.blocking_write_and_flush(answer.as_bytes());
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

fn fan_out(n: usize, authority: &str) -> String {
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    let mut pending = Vec::new();
    for _ in 0..n {
        let req = OutgoingRequest::new(Fields::new());
        let _ = req.set_scheme(Some(&Scheme::Http));
        let _ = req.set_authority(Some(authority));
        let _ = req.set_path_with_query(Some("/"));
        match wasi::http::outgoing_handler::handle(req, None) {
            Ok(fut) => pending.push(fut),
            Err(ErrorCode::ConnectionLimitReached) => limited += 1,
            Err(_) => other += 1,
        }
    }
    for fut in pending {
        fut.subscribe().block();
        match fut.get() {
            Some(Ok(Ok(_))) => ok += 1,
            Some(Ok(Err(ErrorCode::ConnectionLimitReached))) => limited += 1,
            _ => other += 1,
        }
    }
    format!("ok {ok} limited {limited} other {other}")
}

wasi::http::proxy::export!(Fanout);
