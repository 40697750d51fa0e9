//! A raw QUIC test plugin. Each client stream carries one command (the
//! bytes up to the client's fin); the answer comes back on the same stream:
//!
//! | command | what it does |
//! | --- | --- |
//! | `echo TEXT` | answers `TEXT` |
//! | `after MS` | answers `tick after MS` once MS milliseconds have passed (timers through wait-for-data) |
//! | `stats` | answers `rtt_us=.. recv_bytes=.. sent_packets=..` |
//! | `push` | opens a server stream (unidirectional) carrying `pushed`, then answers `ok` |
//! | `close CODE` | closes the connection with that application error code |
//! | `send N` | answers N bytes (`i % 251` for byte i), then closes the connection with 0x42 once the host has taken them all |
//! | `loop` | spins forever |
//! | `bomb` | allocates until memory runs out |
//! | `panic` | panics |
//! | `hostile` | writes, resets and stops 100,000 made-up streams with codes 2^62 and `u64::MAX`, sends a 64 MiB datagram and a 64 MiB write, then answers what the host said |
//!
//! On shutdown it writes `bye` on every stream still waiting for a timer,
//! then closes with code 0x42.

use std::collections::HashMap;

use tq_sdk::quic::{App, Conn, StreamId};
use tq_sdk::quic_bindings::tq::plugin::quic_connection as host;

/// Every stream-taking host call on made-up streams, with codes no QUIC
/// frame can carry; then oversized writes. Counts what the host did.
fn hostile(own: StreamId) -> String {
    let (mut ok, mut refused, mut queued) = (0u32, 0u32, 0u64);
    for k in 0..100_000u64 {
        // Server-initiated ids (1 and 3 mod 4) far beyond any limit, and
        // client-initiated ones the client never opened.
        let id = 1_000_000 + 4 * k + [1, 3, 0, 2][(k % 4) as usize];
        match host::stream_send(id, b"x", false) {
            Ok(n) => queued += n,
            Err(_) => refused += 1,
        }
        for code in [1u64 << 62, u64::MAX] {
            match host::reset_stream(id, code) {
                Ok(()) => ok += 1,
                Err(_) => refused += 1,
            }
            match host::stop_sending(id, code) {
                Ok(()) => ok += 1,
                Err(_) => refused += 1,
            }
        }
    }
    for code in [1u64 << 62, u64::MAX] {
        match host::reset_stream(own, code) {
            Ok(()) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    let datagram = format!("{:?}", host::send_datagram(&vec![0u8; 64 << 20]).is_ok());
    let big = host::stream_send(own, &vec![b'w'; 64 << 20], false);
    format!("ok {ok} refused {refused} queued {queued} datagram {datagram} big {big:?}")
}

#[derive(Default)]
struct Probe {
    commands: HashMap<StreamId, Vec<u8>>,
    /// Streams waiting for a timer: (due, stream, ms).
    due: Vec<(u64, StreamId, u64)>,
    hoard: Vec<Vec<u8>>,
    /// A stream whose answer ends the connection once the host took it.
    close_after: Option<StreamId>,
}

impl Probe {
    fn run(&mut self, conn: &mut Conn, stream: StreamId, cmd: &str) {
        let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match verb {
            "echo" => conn.write(stream, arg.as_bytes(), true),
            "after" => match arg.parse::<u64>() {
                Ok(ms) => self.due.push((conn.now_ms() + ms, stream, ms)),
                Err(_) => conn.write(stream, b"bad number", true),
            },
            "stats" => {
                let s = conn.stats();
                let answer = format!(
                    "rtt_us={} recv_bytes={} sent_packets={}",
                    s.rtt_us, s.recv_bytes, s.sent_packets
                );
                conn.write(stream, answer.as_bytes(), true);
            }
            "push" => {
                let id = conn.open_uni();
                conn.write(id, b"pushed", true);
                conn.write(stream, b"ok", true);
            }
            "close" => conn.close(arg.parse().unwrap_or(0), "asked to"),
            "send" => {
                let n: usize = arg.parse().unwrap_or(0);
                let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                conn.write(stream, &data, true);
                self.close_after = Some(stream);
                self.close_if_sent(conn);
            }
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "bomb" => loop {
                let mut v = vec![0u8; 1 << 20];
                v[0] = 1;
                self.hoard.push(std::hint::black_box(v));
            },
            "panic" => panic!("this plugin panics on purpose"),
            "hostile" => {
                let answer = hostile(stream);
                let id = conn.open_uni();
                conn.write(id, answer.as_bytes(), true);
                conn.close(u64::MAX, &"r".repeat(1 << 20));
            }
            _ => conn.write(stream, b"unknown command", true),
        }
    }
}

impl Probe {
    fn close_if_sent(&mut self, conn: &mut Conn) {
        if let Some(s) = self.close_after {
            if conn.pending(s) == 0 {
                self.close_after = None;
                conn.close(0x42, "sent");
            }
        }
    }
}

impl App for Probe {
    fn on_writable(&mut self, conn: &mut Conn, _stream: StreamId) {
        self.close_if_sent(conn);
    }

    fn on_stream_data(&mut self, conn: &mut Conn, stream: StreamId, data: &[u8], fin: bool) {
        self.commands
            .entry(stream)
            .or_default()
            .extend_from_slice(data);
        if fin {
            let cmd = self.commands.remove(&stream).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).trim().to_owned();
            self.run(conn, stream, &cmd);
        }
    }

    fn on_timer(&mut self, conn: &mut Conn) {
        let now = conn.now_ms();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.due.drain(..).partition(|(at, _, _)| *at <= now);
        self.due = waiting;
        for (_, stream, ms) in ready {
            conn.write(stream, format!("tick after {ms}").as_bytes(), true);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.due.iter().map(|(at, _, _)| *at).min()
    }

    fn on_shutdown(&mut self, conn: &mut Conn) {
        for (_, stream, _) in self.due.drain(..) {
            conn.write(stream, b"bye", true);
        }
        conn.close(0x42, "shutting down");
    }
}

tq_sdk::export_quic_app!(Probe);
