//! One module per subcommand; each owns its arguments and its `run`.

pub mod doctor;
pub mod image;
pub mod server;
pub mod sprite;
pub mod transfer;
pub mod vm;
pub mod volume;
