//! A wasi:http handler written with tq-sdk's `http` module: `GET /` says
//! hello, `POST /upper` streams the body back upper-cased, `GET /count/N`
//! streams the numbers 1..=N, one per line.

use std::io::Read;

use tq_sdk::http::{Handler, Request, Response};

struct SdkHttp;

impl Handler for SdkHttp {
    fn handle(mut req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => Response::text(200, "hello from tq-sdk over wasi:http\n"),
            ("POST", "/upper") => {
                let Some(mut body) = req.body_reader() else {
                    return Response::text(400, "no body\n");
                };
                Response::new(200).stream(move |w| {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = body.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        buf[..n].make_ascii_uppercase();
                        w.write_all(&buf[..n])?;
                    }
                })
            }
            ("GET", p) if p.starts_with("/count/") => match p[7..].parse::<u64>() {
                Ok(n) => Response::new(200).stream(move |w| {
                    for i in 1..=n {
                        writeln!(w, "{i}")?;
                    }
                    Ok(())
                }),
                Err(_) => Response::text(400, "N must be a number\n"),
            },
            _ => Response::text(404, "not found\n"),
        }
    }
}

tq_sdk::export_http_handler!(SdkHttp);
