//! Fuzzes the negotiation-phase parsers (option header, GO/INFO payload,
//! export names). Run: `cargo +nightly fuzz run option`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp_nbd::protocol::{self as p, GoRequest, OptionHeader};

fuzz_target!(|data: &[u8]| {
    if let Some(hdr) = data.get(..p::OPTION_HEADER_LEN) {
        let _ = OptionHeader::parse(hdr.try_into().unwrap());
    }
    if let Ok(go) = GoRequest::parse(data) {
        // Whatever parses re-encodes to the same bytes.
        assert_eq!(go.encode(), data);
    }
    let _ = p::parse_name(data);
});
