//! Applications that ship inside the binary, so a first run needs no plugin.

mod echo;
mod files;
mod page;

pub use echo::EchoApplication;
pub use files::{HqApplication, StaticFiles, HQ_BUSY, HQ_NOT_FOUND, MAX_OPEN_FILES};
pub use page::WelcomePage;
