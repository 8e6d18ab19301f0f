//! The host <-> guest agent wire protocol. See `docs/AGENT.md`.
