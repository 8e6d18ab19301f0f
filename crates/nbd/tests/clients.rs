//! Real NBD clients (nbdinfo, qemu-io, qemu-img, fio) against a FileDevice
//! export over a unix socket and over TCP.

mod common;

use common::{run_ok, TestServer, Transport, XorShift};

const MIB: u64 = 1024 * 1024;

/// One test per transport for a scenario `async fn(Transport)`.
macro_rules! on_both_transports {
    ($scenario:ident: $unix:ident, $tcp:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $unix() {
            $scenario(Transport::Unix).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $tcp() {
            $scenario(Transport::Tcp).await;
        }
    };
}

async fn nbdinfo_reports_size_and_name(t: Transport) {
    let srv = TestServer::start(t, 64 * MIB).await;
    let out = run_ok("nbdinfo", "libnbd-bin", &["--json", &srv.uri("disk")]).await;
    assert!(out.contains("\"export-name\": \"disk\""), "{out}");
    assert!(out.contains("\"export-size\": 67108864"), "{out}");
    assert!(out.contains("\"can_flush\": true"), "{out}");
    assert!(out.contains("\"is_read_only\": false"), "{out}");

    // The default export is the first one added.
    let out = run_ok("nbdinfo", "libnbd-bin", &["--size", &srv.uri("")]).await;
    assert_eq!(out.trim(), "67108864");

    let out = run_ok("nbdinfo", "libnbd-bin", &["--json", &srv.uri("ro")]).await;
    assert!(out.contains("\"is_read_only\": true"), "{out}");
    srv.stop().await;
}

on_both_transports!(nbdinfo_reports_size_and_name: nbdinfo_unix, nbdinfo_tcp);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_list_shows_every_export() {
    let srv = TestServer::start(Transport::Unix, 4 * MIB).await;
    let out = run_ok("nbdinfo", "libnbd-bin", &["--list", "--json", &srv.uri("")]).await;
    assert!(out.contains("\"export-name\": \"disk\""), "{out}");
    assert!(out.contains("\"export-name\": \"ro\""), "{out}");
    srv.stop().await;
}

async fn qemu_io_patterns(t: Transport) {
    let srv = TestServer::start(t, 64 * MIB).await;
    let uri = srv.uri("disk");
    // Aligned, unaligned, crossing 1 MiB boundaries, and the very last bytes.
    let cases: [(u64, u64, u8); 5] = [
        (0, 65536, 0x11),
        (300_000, 12800, 0x22),
        (MIB - 3000, 8192, 0x33),
        (10 * MIB + 1, 3 * MIB, 0x44),
        (64 * MIB - 4096, 4096, 0x55),
    ];
    for (off, len, pat) in cases {
        let w = format!("write -P {pat:#x} {off} {len}");
        let r = format!("read -P {pat:#x} {off} {len}");
        let out = run_ok(
            "qemu-io",
            "qemu-utils",
            &["-f", "raw", &uri, "-c", &w, "-c", &r],
        )
        .await;
        assert!(!out.contains("fail"), "{out}");
        assert!(
            out.contains(&format!("read {len}/{len} bytes at offset {off}")),
            "{out}"
        );
    }
    // The bytes really are in the file behind the export.
    let img = std::fs::read(&srv.image).unwrap();
    for (off, len, pat) in cases {
        let (o, l) = (off as usize, len as usize);
        assert!(
            img[o..o + l].iter().all(|&b| b == pat),
            "pattern {pat:#x} at {off}"
        );
    }

    // Write zeroes and discard, then read zeros back (through the export and the file).
    let out = run_ok(
        "qemu-io",
        "qemu-utils",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -z 0 32768",
            "-c",
            "read -P 0 0 32768",
            "-c",
            "discard 10485761 1048576",
            "-c",
            "read -P 0 10485761 1048576",
            "-c",
            "read -P 0x44 11534337 1048576",
        ],
    )
    .await;
    assert!(!out.contains("fail"), "{out}");
    let img = std::fs::read(&srv.image).unwrap();
    assert!(img[..32768].iter().all(|&b| b == 0));
    assert!(img[32768..65536].iter().all(|&b| b == 0x11));
    let d = 10 * MIB as usize + 1;
    assert!(img[d..d + MIB as usize].iter().all(|&b| b == 0));
    srv.stop().await;
}

on_both_transports!(qemu_io_patterns: qemu_io_unix, qemu_io_tcp);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_write_on_read_only_export_fails() {
    let srv = TestServer::start(Transport::Unix, 4 * MIB).await;
    let out = common::run(
        "qemu-io",
        "qemu-utils",
        &["-f", "raw", "-r", &srv.uri("ro"), "-c", "read -P 0 0 4096"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    // Opened read-write, qemu refuses to open: the export advertises READ_ONLY.
    let out = common::run(
        "qemu-io",
        "qemu-utils",
        &["-f", "raw", &srv.uri("ro"), "-c", "write -P 1 0 4096"],
    )
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.contains("Permission denied"),
        "{text}"
    );
    srv.stop().await;
}

async fn qemu_img_round_trip(t: Transport) {
    let srv = TestServer::start(t, 16 * MIB).await;
    let src = srv.dir.path().join("src.img");
    let back = srv.dir.path().join("back.img");
    let mut data = vec![0u8; 16 * MIB as usize];
    XorShift(0x5eed).fill(&mut data);
    // Leave zero runs so qemu-img also exercises write-zeroes.
    data[3 * MIB as usize..5 * MIB as usize].fill(0);
    std::fs::write(&src, &data).unwrap();
    let uri = srv.uri("disk");
    run_ok(
        "qemu-img",
        "qemu-utils",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &uri,
        ],
    )
    .await;
    run_ok(
        "qemu-img",
        "qemu-utils",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            back.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        std::fs::read(&back).unwrap() == data,
        "bytes read back differ"
    );
    assert!(
        std::fs::read(&srv.image).unwrap() == data,
        "bytes in the export's file differ"
    );
    srv.stop().await;
}

on_both_transports!(qemu_img_round_trip: qemu_img_convert_unix, qemu_img_convert_tcp);

async fn fio_verify(t: Transport, rw: &str, bs: &str, size: &str) {
    let srv = TestServer::start(t, 64 * MIB).await;
    let uri = srv.uri("disk");
    let out = run_ok(
        "fio",
        "fio",
        &[
            "--name=nbdjob",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            "--iodepth=16",
            &format!("--size={size}"),
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            // Otherwise fio leaves a state file in the working directory.
            "--verify_state_save=0",
        ],
    )
    .await;
    assert!(out.contains("err= 0"), "{out}");
    assert!(!out.contains("verify failed"), "{out}");
    assert!(!out.contains("bad magic"), "{out}");
    srv.stop().await;
}

async fn fio_randwrite_4k_qd16_verifies(t: Transport) {
    fio_verify(t, "randwrite", "4k", "32M").await;
}

on_both_transports!(fio_randwrite_4k_qd16_verifies: fio_randwrite_4k_qd16_verifies_unix, fio_randwrite_4k_qd16_verifies_tcp);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_seq_1m_verifies() {
    fio_verify(Transport::Unix, "write", "1M", "64M").await;
}

/// nbdcopy opens several connections when the export advertises multi-conn,
/// each with many requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_multi_conn_round_trip() {
    let srv = TestServer::start(Transport::Unix, 32 * MIB).await;
    let src = srv.dir.path().join("src.img");
    let back = srv.dir.path().join("back.img");
    let mut data = vec![0u8; 32 * MIB as usize];
    XorShift(0xc0ffee).fill(&mut data);
    data[MIB as usize..9 * MIB as usize].fill(0);
    std::fs::write(&src, &data).unwrap();
    std::fs::write(&back, []).unwrap();
    let uri = srv.uri("disk");
    let src_s = src.to_str().unwrap();
    run_ok(
        "nbdcopy",
        "libnbd-bin",
        &["--connections=4", "--requests=32", src_s, &uri],
    )
    .await;
    run_ok(
        "nbdcopy",
        "libnbd-bin",
        &["--connections=4", &uri, back.to_str().unwrap()],
    )
    .await;
    assert!(
        std::fs::read(&back).unwrap() == data,
        "bytes read back differ"
    );
    assert!(
        std::fs::read(&srv.image).unwrap() == data,
        "bytes in the export's file differ"
    );
    srv.stop().await;
}
