//! The one conversion between HTTP/3 header sections and the `http` crate's
//! types, with one set of rules (RFC 9114 §4.3) for every kind of handler:
//! native ones and wasi:http components see the same requests, and the same
//! malformed ones are refused.

use quiche::h3::{Header, NameValue};

use super::error::H3Error;

/// The `:protocol` of an extended CONNECT request (RFC 9220), kept in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectProtocol(pub String);

/// Builds an `http::Request` from a request's header section.
///
/// Refused as malformed: a missing `:method`; a missing `:scheme` or
/// `:path` (except for CONNECT, which has neither, RFC 9114 §4.4); an
/// unknown, repeated or misplaced pseudo-header; a pseudo-header that is not
/// UTF-8; a field name or value the `http` crate rejects (upper case, CR,
/// LF, NUL). A missing `:authority` reads as `localhost`.
///
/// ```
/// use tq_host::http3::{headers, request_from_head};
/// let head = headers(&[(":method", "GET"), (":scheme", "https"), (":authority", "a.example"), (":path", "/x?y")]);
/// let req = request_from_head(&head, ()).unwrap();
/// assert_eq!(req.uri(), "https://a.example/x?y");
/// assert!(request_from_head(&headers(&[(":method", "GET")]), ()).is_err());
/// ```
///
/// # Errors
/// [`H3Error::Malformed`] saying which rule the head broke.
pub fn request_from_head<B>(headers: &[Header], body: B) -> Result<http::Request<B>, H3Error> {
    let bad = |m: String| H3Error::Malformed(m);
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut protocol = None;
    let mut fields = http::HeaderMap::with_capacity(headers.len());
    let mut seen_regular = false;
    for h in headers {
        let name = h.name();
        if let Some(pseudo) = name.strip_prefix(b":") {
            if seen_regular {
                return Err(bad(format!(
                    "pseudo-header :{} after a regular field",
                    String::from_utf8_lossy(pseudo)
                )));
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => &mut path,
                b"protocol" => &mut protocol,
                _ => {
                    return Err(bad(format!(
                        "unknown pseudo-header :{}",
                        String::from_utf8_lossy(pseudo)
                    )))
                }
            };
            if slot.is_some() {
                return Err(bad(format!(
                    "repeated pseudo-header :{}",
                    String::from_utf8_lossy(pseudo)
                )));
            }
            let value = std::str::from_utf8(h.value()).map_err(|_| {
                bad(format!(
                    "pseudo-header :{} is not UTF-8",
                    String::from_utf8_lossy(pseudo)
                ))
            })?;
            *slot = Some(value);
        } else {
            seen_regular = true;
            let (n, v) = field(name, h.value())?;
            fields.append(n, v);
        }
    }
    let method = method.ok_or_else(|| bad("missing :method".into()))?;
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| bad(format!("invalid :method {method:?}")))?;
    let uri = if method == http::Method::CONNECT && protocol.is_none() {
        // Plain CONNECT: the authority is the whole target.
        if scheme.is_some() || path.is_some() {
            return Err(bad("CONNECT with :scheme or :path".into()));
        }
        authority
            .ok_or_else(|| bad("CONNECT without :authority".into()))?
            .to_owned()
    } else {
        let scheme = scheme.ok_or_else(|| bad("missing :scheme".into()))?;
        let path = path.ok_or_else(|| bad("missing :path".into()))?;
        if path.is_empty() {
            return Err(bad("empty :path".into()));
        }
        format!("{scheme}://{}{path}", authority.unwrap_or("localhost"))
    };
    let uri: http::Uri = uri
        .parse()
        .map_err(|e| bad(format!("invalid request target: {e}")))?;
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_3;
    *req.headers_mut() = fields;
    if let Some(p) = protocol {
        req.extensions_mut().insert(ConnectProtocol(p.to_owned()));
    }
    Ok(req)
}

fn field(name: &[u8], value: &[u8]) -> Result<(http::HeaderName, http::HeaderValue), H3Error> {
    // HTTP/3 field names are lower case (RFC 9114 §4.2); `from_bytes` would
    // quietly lower-case them.
    if name.iter().any(u8::is_ascii_uppercase) {
        return Err(H3Error::Malformed(format!(
            "upper-case field name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    let n = http::HeaderName::from_bytes(name).map_err(|_| {
        H3Error::Malformed(format!(
            "invalid field name {:?}",
            String::from_utf8_lossy(name)
        ))
    })?;
    let v = http::HeaderValue::from_bytes(value)
        .map_err(|_| H3Error::Malformed(format!("invalid value for field {n}")))?;
    Ok((n, v))
}

/// A trailer section (or any section without pseudo-headers) as a
/// `HeaderMap`, under the same rules as [`request_from_head`].
///
/// # Errors
/// [`H3Error::Malformed`] for a pseudo-header or an invalid field.
pub fn header_map(list: &[Header]) -> Result<http::HeaderMap, H3Error> {
    let mut map = http::HeaderMap::with_capacity(list.len());
    for h in list {
        if h.name().starts_with(b":") {
            return Err(H3Error::Malformed(format!(
                "pseudo-header {} in a trailer section",
                String::from_utf8_lossy(h.name())
            )));
        }
        let (n, v) = field(h.name(), h.value())?;
        map.append(n, v);
    }
    Ok(map)
}

/// A header section from a `HeaderMap`, with `:status` first when given
/// (a response head); without it, a trailer section.
///
/// ```
/// let mut map = http::HeaderMap::new();
/// map.insert("content-type", "text/plain".parse().unwrap());
/// let list = tq_host::http3::header_list(Some(http::StatusCode::OK), &map);
/// assert_eq!(list.len(), 2);
/// ```
pub fn header_list(status: Option<http::StatusCode>, map: &http::HeaderMap) -> Vec<Header> {
    let mut out = Vec::with_capacity(map.len() + 1);
    if let Some(s) = status {
        out.push(Header::new(b":status", s.as_str().as_bytes()));
    }
    for (n, v) in map {
        out.push(Header::new(n.as_str().as_bytes(), v.as_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http3::frames::headers;

    fn head(pairs: &[(&str, &str)]) -> Result<http::Request<()>, H3Error> {
        request_from_head(&headers(pairs), ())
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "a.example"),
        (":path", "/p"),
    ];

    #[test]
    fn a_well_formed_head_converts() {
        let mut pairs = GET.to_vec();
        pairs.push(("x-a", "1"));
        pairs.push(("x-a", "2"));
        let r = head(&pairs).unwrap();
        assert_eq!(r.method(), http::Method::GET);
        assert_eq!(r.uri(), "https://a.example/p");
        assert_eq!(r.version(), http::Version::HTTP_3);
        assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
    }

    #[test]
    fn a_missing_authority_reads_as_localhost() {
        let r = head(&[(":method", "GET"), (":scheme", "https"), (":path", "/")]).unwrap();
        assert_eq!(r.uri(), "https://localhost/");
    }

    #[test]
    fn malformed_heads_are_refused_with_the_rule_broken() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(":scheme", "https"), (":path", "/")], "missing :method"),
            (&[(":method", "GET"), (":path", "/")], "missing :scheme"),
            (&[(":method", "GET"), (":scheme", "https")], "missing :path"),
            (
                &[(":method", "GET"), (":scheme", "https"), (":path", "")],
                "empty :path",
            ),
            (
                &[(":method", "GET"), (":method", "GET")],
                "repeated pseudo-header",
            ),
            (
                &[(":method", "GET"), (":foo", "x")],
                "unknown pseudo-header",
            ),
            (&[("x", "1"), (":method", "GET")], "after a regular field"),
            (&[(":method", "G T")], "invalid :method"),
            (
                &[
                    (":method", "CONNECT"),
                    (":authority", "a:1"),
                    (":path", "/"),
                ],
                "CONNECT with",
            ),
        ];
        for (pairs, want) in cases {
            let e = head(pairs).unwrap_err().to_string();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
        let mut upper = GET.to_vec();
        upper.push(("X-Up", "1"));
        assert!(head(&upper).unwrap_err().to_string().contains("upper-case"));
        let mut crlf = GET.to_vec();
        crlf.push(("x", "a\r\nb"));
        assert!(head(&crlf)
            .unwrap_err()
            .to_string()
            .contains("invalid value"));
        let bad_utf8 = vec![
            Header::new(b":method", b"GET"),
            Header::new(b":scheme", b"https"),
            Header::new(b":path", b"/\xff"),
        ];
        assert!(request_from_head(&bad_utf8, ())
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
    }

    #[test]
    fn connect_targets_the_authority() {
        let r = head(&[(":method", "CONNECT"), (":authority", "a.example:443")]).unwrap();
        assert_eq!(r.uri(), "a.example:443");
        let ext = head(&[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "a.example"),
            (":path", "/chat"),
        ])
        .unwrap();
        assert_eq!(
            ext.extensions().get::<ConnectProtocol>(),
            Some(&ConnectProtocol("websocket".into()))
        );
    }

    #[test]
    fn header_lists_round_trip() {
        let mut map = http::HeaderMap::new();
        map.append("a", "1".parse().unwrap());
        map.append("a", "2".parse().unwrap());
        let list = header_list(None, &map);
        assert_eq!(header_map(&list).unwrap(), map);
        assert!(header_map(&headers(&[(":status", "200")])).is_err());
    }
}

/// Randomised request heads (a short run here; `PROPTEST_CASES=N` for
/// more).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// A field: a known pseudo-header or a plausible name, or raw bytes;
    /// values from a small alphabet with the bytes HTTP forbids.
    fn field() -> impl Strategy<Value = Header> {
        let name = prop_oneof![
            Just(b":method".to_vec()),
            Just(b":scheme".to_vec()),
            Just(b":authority".to_vec()),
            Just(b":path".to_vec()),
            Just(b":protocol".to_vec()),
            Just(b"content-length".to_vec()),
            Just(b"x-a".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        let value = prop_oneof![
            Just(b"GET".to_vec()),
            Just(b"CONNECT".to_vec()),
            Just(b"https".to_vec()),
            Just(b"/p?q".to_vec()),
            Just(b"a.example:443".to_vec()),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'a'),
                    Just(b'/'),
                    Just(b':'),
                    Just(b'\r'),
                    Just(b'\n'),
                    Just(0u8),
                    Just(b' '),
                    any::<u8>()
                ],
                0..24
            ),
        ];
        (name, value).prop_map(|(n, v)| Header::new(&n, &v))
    }

    proptest! {
        #[test]
        fn any_head_converts_or_is_refused_never_a_panic(list in proptest::collection::vec(field(), 0..10)) {
            if let Ok(req) = request_from_head(&list, ()) {
                // What converts is a request the http crate accepts, with
                // no pseudo-header left among its fields.
                prop_assert!(req.headers().keys().all(|k| !k.as_str().starts_with(':')));
                let _ = header_map(&list);
            }
        }
    }
}
