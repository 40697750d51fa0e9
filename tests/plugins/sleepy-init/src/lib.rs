//! A plugin whose `init` sleeps for an hour (using no CPU, so only the
//! wall-clock limit can cut it off): a reload to it must be refused within
//! that limit, and reloads after it must still work.

use tq_sdk::http3::App;

#[derive(Default)]
struct SleepyInit;

impl App for SleepyInit {
    fn init() -> Result<(), String> {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Ok(())
    }
}

tq_sdk::export_http3_app!(SleepyInit);
