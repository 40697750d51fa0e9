// Shared by the counter-a and counter-b test plugins, which define VERSION
// and include this file: a raw QUIC plugin that counts `incr` commands per
// connection and carries the count across a reload (save / restore).
// Every stream is one command, answered as `VERSION COUNT`.

use tq_sdk::quic::{App, Conn, StreamId};

#[derive(Default)]
struct Counter {
    count: u64,
    commands: std::collections::HashMap<StreamId, Vec<u8>>,
}

impl App for Counter {
    fn on_stream_data(&mut self, conn: &mut Conn, stream: StreamId, data: &[u8], fin: bool) {
        self.commands.entry(stream).or_default().extend_from_slice(data);
        if fin {
            let cmd = self.commands.remove(&stream).unwrap_or_default();
            if cmd == b"incr" {
                self.count += 1;
            }
            conn.write(stream, format!("{VERSION} {}", self.count).as_bytes(), true);
        }
    }

    fn save(&self) -> Option<Vec<u8>> {
        // Only between commands: a half-received one would be lost.
        self.commands
            .is_empty()
            .then(|| self.count.to_le_bytes().to_vec())
    }

    fn restore(state: &[u8]) -> Result<Self, String> {
        let bytes: [u8; 8] = state.try_into().map_err(|_| "bad state".to_string())?;
        Ok(Self {
            count: u64::from_le_bytes(bytes),
            commands: Default::default(),
        })
    }
}

tq_sdk::export_quic_app!(Counter);
