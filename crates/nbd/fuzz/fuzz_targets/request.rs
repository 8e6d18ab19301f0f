//! Fuzzes request-header parsing and validation: no panic, and any accepted
//! command lies inside the export. Run: `cargo +nightly fuzz run request`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp_nbd::protocol::{self as p, Command, ExportLimits, RequestHeader};

fuzz_target!(|data: &[u8]| {
    if data.len() < p::REQUEST_HEADER_LEN + 9 {
        return;
    }
    let (hdr, rest) = data.split_at(p::REQUEST_HEADER_LEN);
    let hdr: &[u8; p::REQUEST_HEADER_LEN] = hdr.try_into().unwrap();
    let Ok(h) = RequestHeader::parse(hdr) else {
        return;
    };
    assert_eq!(RequestHeader::parse(&h.encode()), Ok(h));
    let limits = ExportLimits {
        size: u64::from_le_bytes(rest[..8].try_into().unwrap()),
        read_only: rest[8] & 1 != 0,
        min_block: 1 << (rest[8] >> 4),
    };
    match p::validate(&h, limits) {
        Ok(Command::Read { offset, len })
        | Ok(Command::Write { offset, len, .. })
        | Ok(Command::Trim { offset, len })
        | Ok(Command::WriteZeroes { offset, len, .. }) => {
            assert!(offset.checked_add(u64::from(len)).unwrap() <= limits.size);
        }
        Ok(_) | Err(_) => {}
    }
});
