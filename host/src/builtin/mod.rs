//! Applications that ship inside the binary, so a first run needs no plugin.

mod echo;
mod page;

pub use echo::EchoApplication;
pub use page::WelcomePage;
