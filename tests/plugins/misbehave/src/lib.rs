//! Misbehaves on request, so the tests can check the sandbox:
//!
//! | route | what it does |
//! | --- | --- |
//! | `GET /ok` | answers `ok` |
//! | `GET /loop` | spins forever |
//! | `GET /bomb` | allocates until memory runs out |
//! | `GET /panic` | panics |
//! | `GET /sleep` | sleeps for an hour in the hook (no CPU used) |
//! | `GET /output` | prints a megabyte to stdout, then answers `printed` |
//! | `GET /log` | prints a 1 KiB line to stderr, then answers `logged` |
//! | `GET /file/PATH` | tries to read `/PATH` and answers `read: ...` or `error: ...` |
//! | `GET /env/NAME` | answers the environment variable, or `unset` |

use tq_sdk::http3::{App, Conn, Request};

#[derive(Default)]
struct Misbehave {
    hoard: Vec<Vec<u8>>,
}

impl App for Misbehave {
    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        match req.path.as_str() {
            "/ok" => conn.respond(req.stream, 200, &[], b"ok"),
            "/loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/bomb" => loop {
                let mut v = vec![0u8; 1 << 20];
                v[0] = 1;
                self.hoard.push(std::hint::black_box(v));
            },
            "/panic" => panic!("this plugin panics on purpose"),
            "/sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
            "/output" => {
                let line = "x".repeat(1023);
                for _ in 0..1024 {
                    println!("{line}");
                }
                conn.respond(req.stream, 200, &[], b"printed");
            }
            "/log" => {
                eprintln!("{}", "l".repeat(1023));
                conn.respond(req.stream, 200, &[], b"logged");
            }
            p if p.starts_with("/file/") => {
                let answer = match std::fs::read_to_string(&p["/file".len()..]) {
                    Ok(s) => format!("read: {s}"),
                    Err(e) => format!("error: {e}"),
                };
                conn.respond(req.stream, 200, &[], answer.as_bytes());
            }
            p if p.starts_with("/env/") => {
                let v = std::env::var(&p["/env/".len()..]).unwrap_or_else(|_| "unset".into());
                conn.respond(req.stream, 200, &[], v.as_bytes());
            }
            _ => conn.respond(req.stream, 404, &[], b"not found"),
        }
    }
}

tq_sdk::export_http3_app!(Misbehave);
