//! Protocol edge cases with a hand-written raw client: bad input gets the
//! error the spec asks for, and never a panic, hang or corrupted stream.

mod common;

use common::{RawClient, TestServer, Transport};
use wisp_nbd::protocol as p;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_beyond_end_is_einval_and_connection_stays_usable() {
    let srv = TestServer::start(Transport::Unix, 4 * MIB).await;
    let (mut c, size, flags) = RawClient::open(&srv.listen, "disk").await;
    assert_eq!(size, 4 * MIB);
    assert_ne!(flags & p::FLAG_SEND_FLUSH, 0);

    c.request(p::CMD_READ, 0, 1, 4 * MIB, 512, &[]).await;
    assert_eq!(c.reply().await, (p::EINVAL, 1));
    c.request(p::CMD_READ, 0, 2, 4 * MIB - 512, 1024, &[]).await;
    assert_eq!(c.reply().await, (p::EINVAL, 2));
    c.request(p::CMD_READ, 0, 3, u64::MAX - 10, 512, &[]).await;
    assert_eq!(c.reply().await, (p::EINVAL, 3));

    // Still usable: write then read back.
    c.request(p::CMD_WRITE, 0, 4, 4 * MIB - 512, 512, &[0xaa; 512])
        .await;
    assert_eq!(c.reply().await, (0, 4));
    c.request(p::CMD_READ, 0, 5, 4 * MIB - 512, 512, &[]).await;
    assert_eq!(c.reply().await, (0, 5));
    assert_eq!(c.read_data(512).await, vec![0xaa; 512]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_errors_consume_the_payload() {
    let srv = TestServer::start(Transport::Tcp, 4 * MIB).await;
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    // Past the end: ENOSPC, and the 4 KiB payload must not be taken for a header.
    c.request(p::CMD_WRITE, 0, 1, 4 * MIB, 4096, &[0x25; 4096])
        .await;
    assert_eq!(c.reply().await, (p::ENOSPC, 1));
    c.request(p::CMD_WRITE_ZEROES, 0, 2, 4 * MIB - 1, 2, &[])
        .await;
    assert_eq!(c.reply().await, (p::ENOSPC, 2));
    // Unknown flag on a write: EINVAL, payload skipped.
    c.request(p::CMD_WRITE, 1 << 9, 3, 0, 4096, &[0x25; 4096])
        .await;
    assert_eq!(c.reply().await, (p::EINVAL, 3));
    c.request(p::CMD_FLUSH, 0, 4, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (0, 4));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_read_only_export_are_eperm() {
    let srv = TestServer::start(Transport::Unix, 4 * MIB).await;
    let (mut c, _, flags) = RawClient::open(&srv.listen, "ro").await;
    assert_ne!(flags & p::FLAG_READ_ONLY, 0);
    c.request(p::CMD_WRITE, 0, 1, 0, 512, &[1; 512]).await;
    assert_eq!(c.reply().await, (p::EPERM, 1));
    c.request(p::CMD_TRIM, 0, 2, 0, 512, &[]).await;
    assert_eq!(c.reply().await, (p::EPERM, 2));
    c.request(p::CMD_WRITE_ZEROES, 0, 3, 0, 512, &[]).await;
    assert_eq!(c.reply().await, (p::EPERM, 3));
    c.request(p::CMD_READ, 0, 4, 0, 512, &[]).await;
    assert_eq!(c.reply().await, (0, 4));
    assert_eq!(c.read_data(512).await, vec![0; 512]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_is_einval() {
    let srv = TestServer::start(Transport::Unix, MIB).await;
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    for (cookie, kind) in [(1u64, 5u16), (2, 7), (3, 0xffff)] {
        c.request(kind, 0, cookie, 0, 512, &[]).await;
        assert_eq!(c.reply().await, (p::EINVAL, cookie));
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests() {
    let srv = TestServer::start(Transport::Unix, 128 * MIB).await;
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    // A read over the cap is refused without allocating it.
    c.request(p::CMD_READ, 0, 1, 0, 64 << 20, &[]).await;
    assert_eq!(c.reply().await, (p::EINVAL, 1));
    // A write over the cap announces a payload the server will not read:
    // the connection closes (the spec's answer to an unreadable payload).
    c.request(p::CMD_WRITE, 0, 2, 0, u32::MAX, &[]).await;
    c.expect_closed().await;
    // The server itself is fine.
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    c.request(p::CMD_READ, 0, 3, 0, 512, &[]).await;
    assert_eq!(c.reply().await, (0, 3));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_magic_closes_the_connection() {
    let srv = TestServer::start(Transport::Unix, MIB).await;
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    let mut h = p::RequestHeader {
        flags: 0,
        kind: p::CMD_READ,
        cookie: 1,
        offset: 0,
        length: 512,
    }
    .encode();
    h[0] = 0;
    tokio::io::AsyncWriteExt::write_all(&mut c.s, &h)
        .await
        .unwrap();
    assert_eq!(c.expect_closed().await, 0);
    // Other connections are unaffected.
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    c.request(p::CMD_READ, 0, 2, 0, 512, &[]).await;
    assert_eq!(c.reply().await, (0, 2));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshake_closes_the_connection() {
    let srv = TestServer::start(Transport::Unix, MIB).await;
    // Unknown client flags.
    let mut c = srv.connect().await;
    c.greet(1 << 7).await;
    c.expect_closed().await;
    // Bad option magic.
    let mut c = srv.connect().await;
    c.greet(p::FLAG_C_FIXED_NEWSTYLE).await;
    tokio::io::AsyncWriteExt::write_all(&mut c.s, &[0x55; 16])
        .await
        .unwrap();
    c.expect_closed().await;
    // An option claiming 1 GiB of data.
    let mut c = srv.connect().await;
    c.greet(p::FLAG_C_FIXED_NEWSTYLE).await;
    let mut v = p::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&p::OPT_GO.to_be_bytes());
    v.extend_from_slice(&(1u32 << 30).to_be_bytes());
    tokio::io::AsyncWriteExt::write_all(&mut c.s, &v)
        .await
        .unwrap();
    c.expect_closed().await;
    // The server still serves.
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    c.request(p::CMD_FLUSH, 0, 1, 0, 0, &[]).await;
    assert_eq!(c.reply().await, (0, 1));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_refused_options_get_errors_then_go_works() {
    let srv = TestServer::start(Transport::Unix, MIB).await;
    let mut c = srv.connect().await;
    c.greet(p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES)
        .await;
    for opt in [999u32, p::OPT_STRUCTURED_REPLY, p::OPT_STARTTLS] {
        c.send_option(opt, b"xyz").await;
        let (o, rep, _) = c.option_reply().await;
        assert_eq!((o, rep), (opt, p::REP_ERR_UNSUP));
    }
    // Malformed GO payload.
    c.send_option(p::OPT_GO, &[0, 0, 0, 9, b'a']).await;
    assert_eq!(c.option_reply().await.1, p::REP_ERR_INVALID);
    // Unknown export.
    let req = p::GoRequest {
        name: "nope".into(),
        info_requests: vec![],
    };
    c.send_option(p::OPT_GO, &req.encode()).await;
    let (_, rep, msg) = c.option_reply().await;
    assert_eq!(rep, p::REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&msg).contains("`nope`"));
    // INFO does not end negotiation; GO does.
    let req = p::GoRequest {
        name: "disk".into(),
        info_requests: vec![p::INFO_NAME, p::INFO_BLOCK_SIZE],
    };
    c.send_option(p::OPT_INFO, &req.encode()).await;
    let mut kinds = Vec::new();
    loop {
        let (o, rep, data) = c.option_reply().await;
        assert_eq!(o, p::OPT_INFO);
        if rep == p::REP_ACK {
            break;
        }
        assert_eq!(rep, p::REP_INFO);
        let kind = u16::from_be_bytes([data[0], data[1]]);
        if kind == p::INFO_BLOCK_SIZE {
            let max = u32::from_be_bytes(data[10..14].try_into().unwrap());
            assert_eq!(max, p::MAX_REQUEST_LEN);
        }
        if kind == p::INFO_NAME {
            assert_eq!(&data[2..], b"disk");
        }
        kinds.push(kind);
    }
    assert!(kinds.contains(&p::INFO_EXPORT) && kinds.contains(&p::INFO_BLOCK_SIZE));
    assert!(kinds.contains(&p::INFO_NAME));
    let (size, _) = c.go("disk").await;
    assert_eq!(size, MIB);
    c.request(p::CMD_READ, 0, 1, 0, 8, &[]).await;
    assert_eq!(c.reply().await, (0, 1));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_names_every_export() {
    let srv = TestServer::start(Transport::Tcp, MIB).await;
    let mut c = srv.connect().await;
    c.greet(p::FLAG_C_FIXED_NEWSTYLE).await;
    c.send_option(p::OPT_LIST, &[]).await;
    let mut names = Vec::new();
    loop {
        let (o, rep, data) = c.option_reply().await;
        assert_eq!(o, p::OPT_LIST);
        match rep {
            p::REP_SERVER => {
                let n = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                names.push(String::from_utf8(data[4..4 + n].to_vec()).unwrap());
            }
            p::REP_ACK => break,
            other => panic!("unexpected reply {other:#x}"),
        }
    }
    assert_eq!(names, ["disk", "ro"]);
    // LIST with data is invalid.
    c.send_option(p::OPT_LIST, b"x").await;
    assert_eq!(c.option_reply().await.1, p::REP_ERR_INVALID);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_is_acknowledged_and_closes() {
    let srv = TestServer::start(Transport::Unix, MIB).await;
    let mut c = srv.connect().await;
    c.greet(p::FLAG_C_FIXED_NEWSTYLE).await;
    c.send_option(p::OPT_ABORT, &[]).await;
    let (o, rep, _) = c.option_reply().await;
    assert_eq!((o, rep), (p::OPT_ABORT, p::REP_ACK));
    assert_eq!(c.expect_closed().await, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_honours_no_zeroes() {
    let srv = TestServer::start(Transport::Unix, MIB).await;
    for (client_flags, expect) in [
        (p::FLAG_C_FIXED_NEWSTYLE, 10 + 124),
        (p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES, 10),
    ] {
        let mut c = srv.connect().await;
        c.greet(client_flags).await;
        c.send_option(p::OPT_EXPORT_NAME, b"disk").await;
        let reply = c.read_data(expect).await;
        assert_eq!(u64::from_be_bytes(reply[0..8].try_into().unwrap()), MIB);
        assert!(reply[10..].iter().all(|&b| b == 0));
        // The next bytes are the reply to our request, not leftover padding.
        c.request(p::CMD_READ, 0, 77, 0, 4, &[]).await;
        assert_eq!(c.reply().await, (0, 77));
    }
    // An unknown name can only be answered by closing.
    let mut c = srv.connect().await;
    c.greet(p::FLAG_C_FIXED_NEWSTYLE).await;
    c.send_option(p::OPT_EXPORT_NAME, b"nope").await;
    assert_eq!(c.expect_closed().await, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_each_get_one_reply() {
    let srv = TestServer::start(Transport::Unix, 8 * MIB).await;
    let (mut c, _, _) = RawClient::open(&srv.listen, "disk").await;
    // 200 writes of distinct patterns without waiting (more than the in-flight
    // bound, so the server must apply back-pressure rather than drop any).
    let mut batch = Vec::new();
    for i in 0..200u64 {
        let h = p::RequestHeader {
            flags: if i % 7 == 0 { p::CMD_FLAG_FUA } else { 0 },
            kind: p::CMD_WRITE,
            cookie: 1000 + i,
            offset: i * 4096,
            length: 4096,
        };
        batch.extend_from_slice(&h.encode());
        batch.extend_from_slice(&[i as u8; 4096]);
    }
    let (mut r, mut w) = tokio::io::split(c.s);
    let writer = tokio::spawn(async move {
        tokio::io::AsyncWriteExt::write_all(&mut w, &batch)
            .await
            .unwrap();
        w
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let mut rep = [0u8; 16];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut rep)
            .await
            .unwrap();
        assert_eq!(u32::from_be_bytes(rep[4..8].try_into().unwrap()), 0);
        assert!(seen.insert(u64::from_be_bytes(rep[8..16].try_into().unwrap())));
    }
    assert_eq!(seen, (1000..1200).collect());
    let w = writer.await.unwrap();
    c.s = Box::new(r.unsplit(w));
    for i in [0u64, 99, 199] {
        c.request(p::CMD_READ, 0, i, i * 4096, 4096, &[]).await;
        assert_eq!(c.reply().await, (0, i));
        assert_eq!(c.read_data(4096).await, vec![i as u8; 4096]);
    }
    // DISC: the server finishes and closes.
    c.request(p::CMD_DISC, 0, 9, 0, 0, &[]).await;
    assert_eq!(c.expect_closed().await, 0);
    srv.stop().await;
}
