//! The `wisp` binary. All logic lives in the library crates; this file only
//! hands over to [`app::run`] and turns its result into an exit code.

mod app;
mod cmd;
mod config;
mod stdio;
mod table;

fn main() -> std::process::ExitCode {
    app::run()
}
