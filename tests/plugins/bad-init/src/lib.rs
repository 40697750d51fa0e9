//! A plugin whose `init` refuses to start: a reload to it must be refused
//! while the running version keeps serving.

use tq_sdk::http3::App;

#[derive(Default)]
struct BadInit;

impl App for BadInit {
    fn init() -> Result<(), String> {
        Err("missing configuration: this plugin refuses to start on purpose".into())
    }
}

tq_sdk::export_http3_app!(BadInit);
