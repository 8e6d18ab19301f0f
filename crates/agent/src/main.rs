//! The wisp guest agent: PID 1 inside every sprite VM. See `docs/AGENT.md`.

fn main() {
    eprintln!("wisp-agent {}", env!("CARGO_PKG_VERSION"));
}
