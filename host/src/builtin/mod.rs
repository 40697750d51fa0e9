//! Applications that ship inside the binary, so a first run needs no plugin.

mod echo;

pub use echo::EchoApplication;
