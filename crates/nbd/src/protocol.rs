//! NBD wire format: constants, request/option/reply structs with parse, encode and
//! validity checks. Pure functions over bytes, so they can be unit-tested and fuzzed.

use std::fmt;

/// `NBDMAGIC`, the first eight bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation magic, also the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Server handshake flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (sent after the server's handshake flags).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (per export).
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option codes.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Info types inside `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Error codes carried in replies (Linux errno values, as the spec fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Largest payload of one request the server accepts (reads and writes).
pub const MAX_REQUEST_LEN: u32 = 32 * 1024 * 1024;
/// Largest option payload the server reads; export names are at most 4096 bytes.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Longest export name the spec allows.
pub const MAX_NAME_LEN: usize = 4096;

/// Size of a request header on the wire.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of a simple reply header on the wire.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of an option request header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A transmission request header as read from the wire, not yet validated
/// against an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// A header whose magic is wrong: the stream is out of sync and must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMagic(pub u64);

impl fmt::Display for BadMagic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad magic {:#x}", self.0)
    }
}

impl RequestHeader {
    /// Parses the 28-byte request header.
    pub fn parse(b: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, BadMagic> {
        let magic = be_u32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(BadMagic(magic.into()));
        }
        Ok(Self {
            flags: be_u16(b, 4),
            kind: be_u16(b, 6),
            cookie: be_u64(b, 8),
            offset: be_u64(b, 16),
            length: be_u32(b, 24),
        })
    }

    /// Encodes the header (used by tests and the fuzz target's round trip).
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Bytes of payload that follow this header on the wire (only writes carry one).
    pub fn payload_len(&self) -> u32 {
        if self.kind == CMD_WRITE {
            self.length
        } else {
            0
        }
    }
}

/// A validated command, ready to run against a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read { offset: u64, len: u32 },
    Write { offset: u64, len: u32, fua: bool },
    Flush,
    Trim { offset: u64, len: u32 },
    WriteZeroes { offset: u64, len: u32, fua: bool },
    Disconnect,
}

/// What the server knows about an export when it validates a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    pub size: u64,
    pub read_only: bool,
    /// Alignment every offset and length must have (a power of two; 1 = none).
    pub min_block: u32,
}

/// Validates a request header against an export: command kind, flags, length
/// cap, range within the export, and writes on a read-only export. Returns the
/// NBD error code to reply with when the request is refused.
pub fn validate(h: &RequestHeader, limits: ExportLimits) -> Result<Command, u32> {
    let known_flags = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;
    if h.flags & !known_flags != 0 {
        return Err(EINVAL);
    }
    // NO_HOLE only means something for WRITE_ZEROES.
    if h.flags & CMD_FLAG_NO_HOLE != 0 && h.kind != CMD_WRITE_ZEROES {
        return Err(EINVAL);
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let writes = matches!(h.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    match h.kind {
        CMD_DISC => return Ok(Command::Disconnect),
        CMD_FLUSH => return Ok(Command::Flush),
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES => {}
        _ => return Err(EINVAL),
    }
    if writes && limits.read_only {
        return Err(EPERM);
    }
    // Reads and writes carry (or return) a buffer of this size; trims and
    // zeroing carry none. Without structured replies EINVAL is the error the
    // spec allows for an oversized request (EOVERFLOW needs them).
    if matches!(h.kind, CMD_READ | CMD_WRITE) && h.length > MAX_REQUEST_LEN {
        return Err(EINVAL);
    }
    let align = u64::from(limits.min_block.max(1));
    if h.offset % align != 0 || u64::from(h.length) % align != 0 {
        return Err(EINVAL);
    }
    let end = h.offset.checked_add(u64::from(h.length)).ok_or(EINVAL)?;
    if end > limits.size {
        // The spec asks for ENOSPC on writes past the end, EINVAL otherwise.
        return Err(if matches!(h.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            ENOSPC
        } else {
            EINVAL
        });
    }
    let (offset, len) = (h.offset, h.length);
    Ok(match h.kind {
        CMD_READ => Command::Read { offset, len },
        CMD_WRITE => Command::Write { offset, len, fua },
        CMD_TRIM => Command::Trim { offset, len },
        _ => Command::WriteZeroes { offset, len, fua },
    })
}

/// Encodes a simple reply header.
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// An option request header from the negotiation phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    /// Parses the 16-byte option header (`IHAVEOPT`, option, length).
    pub fn parse(b: &[u8; OPTION_HEADER_LEN]) -> Result<Self, BadMagic> {
        let magic = be_u64(b, 0);
        if magic != IHAVEOPT {
            return Err(BadMagic(magic));
        }
        Ok(Self {
            option: be_u32(b, 8),
            length: be_u32(b, 12),
        })
    }
}

/// Why an option payload is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// The payload is shorter or longer than its own length fields say.
    Length,
    /// The export name is too long or not UTF-8.
    Name,
}

/// The payload of `NBD_OPT_GO` / `NBD_OPT_INFO`: an export name and the info
/// types the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRequest {
    pub name: String,
    pub info_requests: Vec<u16>,
}

/// Parses an export name (used by `NBD_OPT_EXPORT_NAME`, whose whole payload is the name).
pub fn parse_name(b: &[u8]) -> Result<String, OptionError> {
    if b.len() > MAX_NAME_LEN {
        return Err(OptionError::Name);
    }
    let s = std::str::from_utf8(b).map_err(|_| OptionError::Name)?;
    if s.contains('\0') {
        return Err(OptionError::Name);
    }
    Ok(s.to_owned())
}

impl GoRequest {
    /// Parses `u32 name length, name, u16 count, count * u16 info type`.
    pub fn parse(b: &[u8]) -> Result<Self, OptionError> {
        if b.len() < 4 {
            return Err(OptionError::Length);
        }
        let name_len = be_u32(b, 0) as usize;
        let rest = &b[4..];
        if name_len > rest.len() || rest.len() - name_len < 2 {
            return Err(OptionError::Length);
        }
        let name = parse_name(&rest[..name_len])?;
        let rest = &rest[name_len..];
        let count = usize::from(be_u16(rest, 0));
        let rest = &rest[2..];
        if rest.len() != count * 2 {
            return Err(OptionError::Length);
        }
        let info_requests = rest.chunks_exact(2).map(|c| be_u16(c, 0)).collect();
        Ok(Self {
            name,
            info_requests,
        })
    }

    /// Encodes the payload (the client side; used by tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(6 + self.name.len() + 2 * self.info_requests.len());
        v.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v.extend_from_slice(&(self.info_requests.len() as u16).to_be_bytes());
        for i in &self.info_requests {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }
}

/// Encodes an option reply: header followed by `data`.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply.to_be_bytes());
    // Every reply we build is small (names are capped at 4096 bytes).
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// `NBD_INFO_EXPORT` payload: type, size, transmission flags.
pub fn encode_info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` payload: type, minimum, preferred, maximum.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&min.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..14].copy_from_slice(&max.to_be_bytes());
    b
}

/// `NBD_INFO_NAME` payload: type, name.
pub fn encode_info_name(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + name.len());
    v.extend_from_slice(&INFO_NAME.to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v
}

/// `NBD_REP_SERVER` payload for `NBD_OPT_LIST`: name length, name.
pub fn encode_server_entry(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + name.len());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v
}

/// Transmission flags for an export with these properties.
pub fn transmission_flags(read_only: bool, multi_conn: bool) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA;
    if read_only {
        f |= FLAG_READ_ONLY;
    } else {
        f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
    }
    if multi_conn {
        f |= FLAG_CAN_MULTI_CONN;
    }
    f
}

/// Maps an I/O error from a device to the NBD error code the client sees.
pub fn errno_for(kind: std::io::ErrorKind) -> u32 {
    use std::io::ErrorKind as K;
    match kind {
        K::InvalidInput => EINVAL,
        K::StorageFull => ENOSPC,
        K::PermissionDenied | K::ReadOnlyFilesystem => EPERM,
        K::OutOfMemory => ENOMEM,
        K::Unsupported => ENOTSUP,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
    }

    const RW: ExportLimits = ExportLimits {
        size: 1 << 20,
        read_only: false,
        min_block: 1,
    };
    const RO: ExportLimits = ExportLimits {
        size: 1 << 20,
        read_only: true,
        min_block: 1,
    };

    #[test]
    fn request_header_round_trips() {
        let h = hdr(CMD_WRITE, CMD_FLAG_FUA, 4096, 512);
        assert_eq!(RequestHeader::parse(&h.encode()), Ok(h));
        assert_eq!(h.payload_len(), 512);
        assert_eq!(hdr(CMD_READ, 0, 0, 512).payload_len(), 0);
    }

    #[test]
    fn request_header_rejects_bad_magic() {
        let mut b = hdr(CMD_READ, 0, 0, 1).encode();
        b[0] ^= 1;
        assert!(RequestHeader::parse(&b).is_err());
    }

    #[test]
    fn validate_accepts_in_range_commands() {
        assert_eq!(
            validate(&hdr(CMD_READ, 0, 0, 4096), RW),
            Ok(Command::Read {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            validate(&hdr(CMD_WRITE, CMD_FLAG_FUA, (1 << 20) - 512, 512), RW),
            Ok(Command::Write {
                offset: (1 << 20) - 512,
                len: 512,
                fua: true
            })
        );
        assert_eq!(
            validate(&hdr(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 1 << 20), RW),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 1 << 20,
                fua: false
            })
        );
        assert_eq!(validate(&hdr(CMD_FLUSH, 0, 0, 0), RW), Ok(Command::Flush));
        assert_eq!(
            validate(&hdr(CMD_DISC, 0, 0, 0), RO),
            Ok(Command::Disconnect)
        );
        assert_eq!(
            validate(&hdr(CMD_READ, 0, 0, 4096), RO),
            Ok(Command::Read {
                offset: 0,
                len: 4096
            })
        );
    }

    #[test]
    fn validate_refuses_out_of_range() {
        assert_eq!(validate(&hdr(CMD_READ, 0, 1 << 20, 1), RW), Err(EINVAL));
        assert_eq!(validate(&hdr(CMD_TRIM, 0, 1 << 20, 1), RW), Err(EINVAL));
        assert_eq!(validate(&hdr(CMD_WRITE, 0, 1 << 20, 1), RW), Err(ENOSPC));
        assert_eq!(
            validate(&hdr(CMD_WRITE_ZEROES, 0, (1 << 20) - 1, 2), RW),
            Err(ENOSPC)
        );
        assert_eq!(validate(&hdr(CMD_READ, 0, u64::MAX, 2), RW), Err(EINVAL));
    }

    #[test]
    fn validate_caps_lengths() {
        let big = ExportLimits {
            size: u64::MAX,
            read_only: false,
            min_block: 1,
        };
        assert_eq!(
            validate(&hdr(CMD_READ, 0, 0, MAX_REQUEST_LEN + 1), big),
            Err(EINVAL)
        );
        assert_eq!(
            validate(&hdr(CMD_WRITE, 0, 0, MAX_REQUEST_LEN + 1), big),
            Err(EINVAL)
        );
        // Trims carry no buffer, so large ones are fine.
        assert!(validate(&hdr(CMD_TRIM, 0, 0, u32::MAX), big).is_ok());
    }

    #[test]
    fn validate_enforces_minimum_block_size() {
        let aligned = ExportLimits {
            min_block: 512,
            ..RW
        };
        assert!(validate(&hdr(CMD_READ, 0, 512, 1024), aligned).is_ok());
        assert_eq!(validate(&hdr(CMD_READ, 0, 1, 512), aligned), Err(EINVAL));
        assert_eq!(validate(&hdr(CMD_WRITE, 0, 0, 100), aligned), Err(EINVAL));
        assert_eq!(
            validate(&hdr(CMD_FLUSH, 0, 0, 0), aligned),
            Ok(Command::Flush)
        );
    }

    #[test]
    fn validate_refuses_writes_on_read_only() {
        for kind in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(validate(&hdr(kind, 0, 0, 512), RO), Err(EPERM));
        }
    }

    #[test]
    fn validate_refuses_unknown_commands_and_flags() {
        assert_eq!(validate(&hdr(5, 0, 0, 0), RW), Err(EINVAL));
        assert_eq!(validate(&hdr(99, 0, 0, 0), RW), Err(EINVAL));
        assert_eq!(validate(&hdr(CMD_READ, 1 << 7, 0, 1), RW), Err(EINVAL));
        assert_eq!(
            validate(&hdr(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 1), RW),
            Err(EINVAL)
        );
    }

    #[test]
    fn option_header_parses() {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
        b[12..16].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            OptionHeader::parse(&b),
            Ok(OptionHeader {
                option: OPT_GO,
                length: 9
            })
        );
        b[3] = 0;
        assert!(OptionHeader::parse(&b).is_err());
    }

    #[test]
    fn go_request_round_trips_and_rejects_bad_lengths() {
        let g = GoRequest {
            name: "disk".into(),
            info_requests: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let enc = g.encode();
        assert_eq!(GoRequest::parse(&enc), Ok(g));
        assert_eq!(
            GoRequest::parse(&enc[..enc.len() - 1]),
            Err(OptionError::Length)
        );
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(GoRequest::parse(&long), Err(OptionError::Length));
        assert_eq!(GoRequest::parse(&[0xff; 6]), Err(OptionError::Length));
        assert_eq!(GoRequest::parse(&[]), Err(OptionError::Length));
    }

    #[test]
    fn names_must_be_utf8_without_nul() {
        assert_eq!(parse_name(b"ok"), Ok("ok".into()));
        assert_eq!(parse_name(b"a\0b"), Err(OptionError::Name));
        assert_eq!(parse_name(&[0xff]), Err(OptionError::Name));
        assert_eq!(parse_name(&[b'a'; 4097]), Err(OptionError::Name));
    }

    #[test]
    fn errno_mapping_matches_trait_docs() {
        use std::io::ErrorKind as K;
        assert_eq!(errno_for(K::InvalidInput), EINVAL);
        assert_eq!(errno_for(K::StorageFull), ENOSPC);
        assert_eq!(errno_for(K::PermissionDenied), EPERM);
        assert_eq!(errno_for(K::Other), EIO);
        assert_eq!(errno_for(K::UnexpectedEof), EIO);
    }

    /// Seeded pseudo-random inputs to every parser: no panic, and whatever
    /// `validate` accepts really is inside the export.
    #[test]
    fn parsers_survive_random_bytes() {
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..100_000u32 {
            let mut b = [0u8; 64];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&next().to_le_bytes());
            }
            if i % 2 == 0 {
                b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                b[6] = 0;
                b[7] %= 10;
            }
            let hb: &[u8; REQUEST_HEADER_LEN] = b[..REQUEST_HEADER_LEN].try_into().unwrap();
            if let Ok(h) = RequestHeader::parse(hb) {
                assert_eq!(RequestHeader::parse(&h.encode()), Ok(h));
                let limits = ExportLimits {
                    size: next() >> (next() % 64),
                    read_only: i % 3 == 0,
                    min_block: 1 << (i % 10),
                };
                match validate(&h, limits) {
                    Ok(Command::Read { offset, len })
                    | Ok(Command::Write { offset, len, .. })
                    | Ok(Command::Trim { offset, len })
                    | Ok(Command::WriteZeroes { offset, len, .. }) => {
                        assert!(offset + u64::from(len) <= limits.size);
                        assert!(len <= MAX_REQUEST_LEN || h.kind >= CMD_TRIM);
                    }
                    Ok(_) => {}
                    Err(e) => assert!([EINVAL, ENOSPC, EPERM].contains(&e)),
                }
            }
            let ob: &[u8; OPTION_HEADER_LEN] = b[..OPTION_HEADER_LEN].try_into().unwrap();
            let _ = OptionHeader::parse(ob);
            let n = (next() % 64) as usize;
            let _ = GoRequest::parse(&b[..n]);
            let _ = parse_name(&b[..n]);
        }
    }

    #[test]
    fn read_only_exports_do_not_advertise_writes() {
        let f = transmission_flags(true, false);
        assert_ne!(f & FLAG_READ_ONLY, 0);
        assert_eq!(f & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0);
        assert_eq!(f & FLAG_CAN_MULTI_CONN, 0);
        assert_ne!(transmission_flags(false, true) & FLAG_CAN_MULTI_CONN, 0);
    }
}
