//! The host <-> guest agent wire protocol. See `docs/AGENT.md`.
//!
//! One byte stream (a virtio-serial port) carries frames. Each frame is a fixed 16-byte
//! header followed by at most [`MAX_PAYLOAD`] bytes. Control frames carry a JSON
//! [`Control`] message; data frames carry raw bytes (no base64: file copies of hundreds of
//! MiB go through here at emulation speeds). Sessions are numbered by the host; session 0
//! is the connection itself (hello, ping, framing errors).

mod codec;
mod message;

pub use codec::{
    decode, encode, encode_header, Decoded, Frame, FrameError, FrameReader, Kind, HEADER_LEN,
};
pub use message::{
    Control, ExecRequest, ExitStatus, FileEvent, FsEntry, FsOp, GuestRequest, ListeningPort,
    ServiceSpec, ServiceStatus, TaskInfo, TtySize, CAPABILITIES,
};

/// Protocol version spoken by this crate. Bumped on any incompatible change; the agent
/// answers a `hello` whose version it does not speak with an error and keeps serving.
pub const PROTOCOL_VERSION: u32 = 1;

/// Frame magic: "wsp" and the framing revision. Lets a reader find the next frame after
/// garbage (resynchronisation) and rejects a peer that speaks something else.
pub const MAGIC: [u8; 4] = *b"wsp\x01";

/// Largest payload of one frame. Both sides reject bigger frames without allocating.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Size of the data chunks both sides send (well under [`MAX_PAYLOAD`]).
pub const CHUNK: usize = 128 * 1024;

/// Flow-control window per session and direction: how many data bytes a sender may have
/// in flight before the receiver grants more with a [`Kind::Window`] frame.
pub const INITIAL_WINDOW: u32 = 2 * 1024 * 1024;

/// The virtio-serial port name the agent looks for under `/sys/class/virtio-ports/*/name`.
pub const PORT_NAME: &str = "org.wisp.agent";
