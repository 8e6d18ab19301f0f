//! Test support shared by wisp's crates: finding required tools, free loopback ports, and a
//! real single-node Garage S3 server ([`Garage`]) for object-store tests and benchmarks.
//!
//! Used as a dev-dependency (`wisp-testkit = { path = "../testkit" }`). Everything here may
//! panic: it runs only inside tests and benchmarks, where a panic with a clear message is
//! the right way to report a broken environment.
//!
//! # object_store settings for Garage
//!
//! These are the exact `object_store` 0.12 settings proven against Garage 2.5.0 by
//! `crates/testkit/tests/garage.rs` (see [`Garage::s3_builder`]):
//!
//! ```no_run
//! # let g = wisp_testkit::Garage::shared();
//! use object_store::aws::AmazonS3Builder;
//! let store = AmazonS3Builder::new()
//!     .with_endpoint(&g.endpoint)                 // "http://127.0.0.1:PORT", no bucket in it
//!     .with_allow_http(true)                      // Garage here speaks plain HTTP
//!     .with_virtual_hosted_style_request(false)   // path style: http://host/BUCKET/key
//!     .with_region(&g.region)                     // "garage": must match s3_region, it is signed
//!     .with_bucket_name(&g.bucket)
//!     .with_access_key_id(&g.access_key_id)
//!     .with_secret_access_key(&g.secret_access_key)
//!     .build()
//!     .unwrap();
//! ```
//!
//! The same settings through the environment (what `AmazonS3Builder::from_env` and the
//! `wisp` CLI read) are given by [`Garage::env_vars`].

mod garage;

pub use garage::{unique_prefix, Garage};

use std::net::TcpListener;
use std::path::PathBuf;

/// Finds `name` on `PATH`, or panics with a message naming the tool and the Debian package
/// that provides it, so a failing test says what to install.
pub fn require_tool(name: &str, debian_package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "this test needs `{name}` (Debian package `{debian_package}`; \
             run scripts/install-deps.sh --test)"
        )
    })
}

/// Finds an executable file called `name` on `PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
///
/// Another process may take it before the caller binds it; tests accept that small race.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Deterministic, incompressible-looking bytes identified by `seed` (xorshift64), for tests
/// that write data and check it reads back.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_that_exists() {
        let sh = require_tool("sh", "dash");
        assert!(sh.is_absolute(), "{sh:?}");
        assert!(sh.ends_with("sh"));
    }

    #[test]
    fn missing_tool_names_the_package() {
        let err = std::panic::catch_unwind(|| require_tool("wisp-no-such-tool", "wisp-pkg"))
            .expect_err("a missing tool must panic");
        let msg = err
            .downcast_ref::<String>()
            .expect("panic message is a String");
        assert_eq!(
            msg,
            "this test needs `wisp-no-such-tool` (Debian package `wisp-pkg`; \
             run scripts/install-deps.sh --test)"
        );
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the free port binds");
    }
}
