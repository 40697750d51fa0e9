//! A plugin whose `init` traps (panics): a reload to it must be refused
//! while the running version keeps serving.

use tq_sdk::http3::App;

#[derive(Default)]
struct TrapInit;

impl App for TrapInit {
    fn init() -> Result<(), String> {
        panic!("this plugin traps in init on purpose");
    }
}

tq_sdk::export_http3_app!(TrapInit);
