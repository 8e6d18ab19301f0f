//! Frame encoding and decoding: a fixed header, a capped payload, resynchronisation.
//!
//! Header (16 bytes, little endian):
//! `magic[4] = "wsp\x01" | kind u8 | flags u8 = 0 | reserved u16 = 0 | session u32 | len u32`.

use crate::{Control, MAGIC, MAX_PAYLOAD};

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 16;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A JSON [`Control`] message.
    Control = 1,
    /// Raw bytes: stdin (host to guest), stdout (guest to host), file contents.
    Data = 2,
    /// Raw bytes of a process's stderr (guest to host).
    Stderr = 3,
    /// End of the data stream in the sender's direction (stdin closed, file complete).
    Eof = 4,
    /// Flow control: a little-endian u32 count of data bytes the sender may send more.
    Window = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Control,
            2 => Kind::Data,
            3 => Kind::Stderr,
            4 => Kind::Eof,
            5 => Kind::Window,
            _ => return None,
        })
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unknown frame kind `{0}`")]
    UnknownKind(u8),
    #[error("reserved header bytes are not zero: flags=`{flags}` reserved=`{reserved}`")]
    Reserved { flags: u8, reserved: u16 },
    #[error("frame payload of `{0}` bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("{kind:?} frame with a payload of `{len}` bytes")]
    BadLength { kind: Kind, len: usize },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub session: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A control frame holding `msg` as JSON.
    pub fn control(session: u32, msg: &Control) -> Frame {
        // Serialising these plain data types cannot fail (no maps with non-string keys).
        let payload = serde_json::to_vec(msg).unwrap_or_default();
        Frame {
            session,
            kind: Kind::Control,
            payload,
        }
    }

    /// A flow-control grant of `bytes` more data bytes.
    pub fn window(session: u32, bytes: u32) -> Frame {
        Frame {
            session,
            kind: Kind::Window,
            payload: bytes.to_le_bytes().to_vec(),
        }
    }

    /// An end-of-stream frame.
    pub fn eof(session: u32) -> Frame {
        Frame {
            session,
            kind: Kind::Eof,
            payload: Vec::new(),
        }
    }

    /// The control message of a [`Kind::Control`] frame.
    pub fn to_control(&self) -> Result<Control, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// The grant of a [`Kind::Window`] frame (its length was validated by [`decode`]).
    pub fn window_bytes(&self) -> u32 {
        let mut b = [0u8; 4];
        let n = self.payload.len().min(4);
        b[..n].copy_from_slice(&self.payload[..n]);
        u32::from_le_bytes(b)
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode(self.kind, self.session, &self.payload)
    }
}

/// The header of a frame of `kind` on `session` with `len` payload bytes.
pub fn encode_header(kind: Kind, session: u32, len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    check_len(kind, len)?;
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&session.to_le_bytes());
    h[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(h)
}

/// A whole frame (header and payload) in one buffer, so one `write` keeps it contiguous.
pub fn encode(kind: Kind, session: u32, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let h = encode_header(kind, session, payload.len())?;
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&h);
    v.extend_from_slice(payload);
    Ok(v)
}

fn check_len(kind: Kind, len: usize) -> Result<(), FrameError> {
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let ok = match kind {
        Kind::Eof => len == 0,
        Kind::Window => len == 4,
        Kind::Control => len > 0,
        Kind::Data | Kind::Stderr => true,
    };
    if ok {
        Ok(())
    } else {
        Err(FrameError::BadLength { kind, len })
    }
}

/// Result of trying to decode the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A frame and the number of bytes it used.
    Frame(Frame, usize),
    /// The buffer holds the start of a frame (or nothing): read more bytes.
    Incomplete,
    /// The front of the buffer is not a valid frame: drop `skip` bytes (up to the next
    /// possible magic) and decode again. `skip` is at least 1.
    Garbage { skip: usize, error: FrameError },
}

/// Decodes one frame from the front of `buf`, never reading past it and never allocating
/// more than the validated payload length.
pub fn decode(buf: &[u8]) -> Decoded {
    // Validate the magic as soon as its first bytes arrive, so garbage is dropped early.
    let m = buf.len().min(4);
    if buf[..m] != MAGIC[..m] {
        let mut got = [0u8; 4];
        got[..m].copy_from_slice(&buf[..m]);
        return Decoded::Garbage {
            skip: resync_skip(buf),
            error: FrameError::BadMagic(got),
        };
    }
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let garbage = |error| Decoded::Garbage {
        skip: resync_skip(buf),
        error,
    };
    let Some(kind) = Kind::from_u8(buf[4]) else {
        return garbage(FrameError::UnknownKind(buf[4]));
    };
    let reserved = u16::from_le_bytes([buf[6], buf[7]]);
    if buf[5] != 0 || reserved != 0 {
        return garbage(FrameError::Reserved {
            flags: buf[5],
            reserved,
        });
    }
    let session = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let len = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    if let Err(e) = check_len(kind, len) {
        return garbage(e);
    }
    if buf.len() < HEADER_LEN + len {
        return Decoded::Incomplete;
    }
    let payload = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    Decoded::Frame(
        Frame {
            session,
            kind,
            payload,
        },
        HEADER_LEN + len,
    )
}

/// Splits a byte stream into frames, for both ends of the channel: feed it each read's
/// bytes and it hands out every complete frame, and one error per run of garbage (not one
/// per skipped byte) before resynchronising on the next magic.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    in_garbage: bool,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Adds `bytes` (the next bytes of the stream) and calls `on` with every frame they
    /// complete, in order, or with the error of a run of garbage.
    pub fn feed(&mut self, bytes: &[u8], mut on: impl FnMut(Result<Frame, FrameError>)) {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            match decode(&self.buf[pos..]) {
                Decoded::Frame(f, used) => {
                    pos += used;
                    self.in_garbage = false;
                    on(Ok(f));
                }
                Decoded::Incomplete => break,
                Decoded::Garbage { skip, error } => {
                    pos += skip;
                    if !self.in_garbage {
                        self.in_garbage = true;
                        on(Err(error));
                    }
                }
            }
        }
        self.buf.drain(..pos);
    }
}

/// How many bytes to drop so the buffer starts at the next possible magic (a full magic,
/// or a prefix of one at the very end). Always at least 1.
fn resync_skip(buf: &[u8]) -> usize {
    for i in 1..buf.len() {
        let tail = &buf[i..];
        let n = tail.len().min(4);
        if tail[..n] == MAGIC[..n] {
            return i;
        }
    }
    buf.len().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = f.encode().unwrap();
        assert_eq!(decode(&bytes), Decoded::Frame(f.clone(), bytes.len()));
        // Every strict prefix is incomplete, never an error.
        for cut in 0..bytes.len() {
            if cut == 0 {
                continue;
            }
            assert_eq!(decode(&bytes[..cut]), Decoded::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn frames_round_trip() {
        roundtrip(Frame::control(0, &Control::Ping));
        roundtrip(Frame::window(7, 12345));
        roundtrip(Frame::eof(u32::MAX));
        roundtrip(Frame {
            session: 3,
            kind: Kind::Data,
            payload: (0..=255u8).collect(),
        });
        roundtrip(Frame {
            session: 3,
            kind: Kind::Stderr,
            payload: vec![],
        });
        assert_eq!(Frame::window(1, 99).window_bytes(), 99);
    }

    #[test]
    fn size_caps_are_enforced_both_ways() {
        assert_eq!(
            encode(Kind::Data, 1, &vec![0; MAX_PAYLOAD + 1]),
            Err(FrameError::TooLarge(MAX_PAYLOAD + 1))
        );
        assert!(encode(Kind::Data, 1, &vec![0; MAX_PAYLOAD]).is_ok());
        // A header announcing 4 GiB is rejected before any payload arrives.
        let mut h = encode_header(Kind::Data, 1, 0).unwrap();
        h[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        match decode(&h) {
            Decoded::Garbage { error, skip } => {
                assert_eq!(error, FrameError::TooLarge(u32::MAX as usize));
                assert_eq!(skip, HEADER_LEN);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            encode(Kind::Window, 1, &[1, 2]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            encode(Kind::Eof, 1, &[1]),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn garbage_before_a_frame_is_skipped() {
        let good = Frame::control(5, &Control::Ping).encode().unwrap();
        let mut buf = b"hello garbage ws wsp".to_vec();
        buf.extend_from_slice(&good);
        let mut errors = 0;
        loop {
            match decode(&buf) {
                Decoded::Frame(f, n) => {
                    assert_eq!(n, buf.len());
                    assert_eq!(f.session, 5);
                    break;
                }
                Decoded::Garbage { skip, .. } => {
                    errors += 1;
                    buf.drain(..skip);
                }
                Decoded::Incomplete => panic!("stalled"),
            }
        }
        assert!(errors >= 1);
    }

    #[test]
    fn the_reader_splits_a_stream_read_in_any_pieces() {
        let mut stream = b"noise".to_vec();
        stream.extend_from_slice(&Frame::control(1, &Control::Ping).encode().unwrap());
        stream.extend_from_slice(b"more noise!");
        stream.extend_from_slice(&Frame::eof(2).encode().unwrap());
        stream.extend_from_slice(&Frame::window(3, 77).encode().unwrap());
        for piece in [1, 3, 7, 16, 1000] {
            let mut r = FrameReader::new();
            let (mut frames, mut errors) = (vec![], 0);
            for chunk in stream.chunks(piece) {
                r.feed(chunk, |item| match item {
                    Ok(f) => frames.push(f.session),
                    Err(_) => errors += 1,
                });
            }
            assert_eq!(frames, vec![1, 2, 3], "pieces of {piece}");
            assert_eq!(errors, 2, "one error per run of garbage, pieces of {piece}");
        }
    }

    #[test]
    fn unknown_kind_and_reserved_bits_are_rejected() {
        let mut h = encode_header(Kind::Data, 1, 0).unwrap();
        h[4] = 99;
        assert!(matches!(
            decode(&h),
            Decoded::Garbage {
                error: FrameError::UnknownKind(99),
                ..
            }
        ));
        let mut h = encode_header(Kind::Data, 1, 0).unwrap();
        h[5] = 1;
        assert!(matches!(
            decode(&h),
            Decoded::Garbage {
                error: FrameError::Reserved { .. },
                ..
            }
        ));
    }

    /// xorshift64*: a seeded generator so a failure reproduces.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed | 1;
        move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn random_bytes_never_panic_and_always_progress() {
        for seed in 0..200u64 {
            let mut r = rng(seed);
            let len = (r() % 4096) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| r() as u8).collect();
            // Sprinkle magics and valid headers so deeper paths are exercised.
            if len > 40 {
                let at = (r() as usize) % (len - 20);
                buf[at..at + 4].copy_from_slice(&MAGIC);
                buf[at + 4] = (r() % 7) as u8;
            }
            while !buf.is_empty() {
                match decode(&buf) {
                    Decoded::Frame(f, n) => {
                        assert!(n >= HEADER_LEN && n <= buf.len());
                        if f.kind == Kind::Control {
                            // Whatever JSON this is, parsing must not panic.
                            let _ = f.to_control();
                        }
                        buf.drain(..n);
                    }
                    Decoded::Garbage { skip, .. } => {
                        assert!(skip >= 1 && skip <= buf.len());
                        buf.drain(..skip);
                    }
                    Decoded::Incomplete => break,
                }
            }
        }
    }
}
