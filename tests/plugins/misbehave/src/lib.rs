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
//! | `GET /codes` | resets, stops and writes 100,000 made-up streams with codes 2^62 and `u64::MAX`, then answers what the host said |
//! | `GET /big-head` | sends a 64 MiB header, then answers what the host said |
//! | `GET /big-body` | sends a 64 MiB body chunk in one call, then ends the body with `accepted N` |
//! | `GET /close-max` | closes the connection with code `u64::MAX` and a 1 MiB reason |
//! | `GET /spin-timer` | asks to be woken at once, every time, from now on (and answers) |
//! | `GET /timer-count` | answers how many timer events this connection has had |
//! | `GET /sleep-on-close` | answers, and sleeps for an hour when the connection closes |
//! | `GET /deep/N` | recurses N deep with 1 KiB of stack per call (in linear memory), then answers `deep N` |

use tq_sdk::bindings::tq::plugin::h3_connection as host;
use tq_sdk::bindings::tq::plugin::types::Header;
use tq_sdk::http3::{App, Conn, Request};

#[derive(Default)]
struct Misbehave {
    hoard: Vec<Vec<u8>>,
    spin: bool,
    timers: u64,
    sleep_on_close: bool,
}

/// Recurses `n` deep, each call holding 1 KiB on the stack in linear
/// memory (its address escapes, so it cannot live in registers): past the
/// 128 KiB stack the build gives plugins, this runs below address 0 and
/// traps.
fn deep(n: u32) -> u8 {
    let mut frame = [0u8; 1024];
    frame[n as usize % 1024] = n as u8;
    let frame = std::hint::black_box(&mut frame);
    if n == 0 {
        frame[0]
    } else {
        deep(n - 1).wrapping_add(frame[1])
    }
}

/// Calls every stream-taking host function on made-up streams with codes
/// no QUIC frame can carry; returns how the host answered, by outcome.
fn made_up_streams() -> String {
    let mut refused = 0u32;
    let mut accepted = 0u32;
    for k in 0..100_000u64 {
        let id = k.wrapping_mul(4).wrapping_add(1_000_000);
        for code in [1u64 << 62, u64::MAX] {
            host::reset_stream(id, code);
            host::stop_sending(id, code);
        }
        match host::send_body(id, b"x", true) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    for id in [u64::MAX, 2, 3, 1u64 << 62] {
        host::reset_stream(id, u64::MAX);
        let h = [Header {
            name: ":status".into(),
            value: b"200".to_vec(),
        }];
        match host::send_headers(id, &h, true) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    format!("accepted {accepted} refused {refused}")
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
            "/codes" => {
                let answer = made_up_streams();
                conn.respond(req.stream, 200, &[], answer.as_bytes());
            }
            "/big-head" => {
                let h = [
                    Header {
                        name: ":status".into(),
                        value: b"200".to_vec(),
                    },
                    Header {
                        name: "x-big".into(),
                        value: vec![b'h'; 64 << 20],
                    },
                ];
                let answer = format!("{:?}", host::send_headers(req.stream, &h, true));
                conn.respond(req.stream, 200, &[], answer.as_bytes());
            }
            "/big-body" => {
                let _ = conn.send_head(req.stream, 200, &[], false);
                let n = host::send_body(req.stream, &vec![b'b'; 64 << 20], true);
                let tail = format!("accepted {n:?}");
                conn.write_body(req.stream, tail.as_bytes(), true);
            }
            "/close-max" => host::close(u64::MAX, &"r".repeat(1 << 20)),
            "/spin-timer" => {
                self.spin = true;
                conn.respond(req.stream, 200, &[], b"spinning");
            }
            "/timer-count" => {
                conn.respond(req.stream, 200, &[], self.timers.to_string().as_bytes())
            }
            "/sleep-on-close" => {
                self.sleep_on_close = true;
                conn.respond(req.stream, 200, &[], b"will sleep");
            }
            p if p.starts_with("/deep/") => match p["/deep/".len()..].parse::<u32>() {
                Ok(n) => {
                    std::hint::black_box(deep(n));
                    conn.respond(req.stream, 200, &[], format!("deep {n}").as_bytes());
                }
                Err(_) => conn.respond(req.stream, 400, &[], b"N must be a number"),
            },
            _ => conn.respond(req.stream, 404, &[], b"not found"),
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.spin.then_some(0)
    }

    fn on_timer(&mut self, _conn: &mut Conn) {
        self.timers += 1;
    }

    fn on_close(&mut self) {
        if self.sleep_on_close {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

tq_sdk::export_http3_app!(Misbehave);
