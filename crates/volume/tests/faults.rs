//! Fault injection: a wrapper object store that fails and delays calls proves
//! that the engine retries, never loses acknowledged data, and reports a clear
//! error once the store stays down past the timeout.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use wisp_nbd::BlockDevice;
use wisp_volume::{Store, VolumeError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_intermittent_faults_and_an_outage_loses_no_acknowledged_data() {
    let env = Env::new();
    let failing = FailingStore::over(&env.url());
    failing.fail_every.store(3, Ordering::SeqCst);
    failing.delay_ms.store(5, Ordering::SeqCst);
    let mut config = env.config("a");
    config.store_timeout = Duration::from_secs(2);
    let store = Store::open_with_object_store(config, failing.clone())
        .await
        .unwrap();
    store.create_volume("f", 16 * MIB).await.unwrap();
    let vol = store.open_volume("f").await.unwrap();
    let a = pattern(70, 2 * MIB as usize);
    write(&vol, 0, &a).await;
    vol.flush().await.unwrap();
    vol.sync().await.unwrap();
    assert!(
        failing.failures.load(Ordering::SeqCst) > 0,
        "no fault was injected"
    );

    // The store goes down: writes and flushes still succeed locally...
    failing.fail_every.store(0, Ordering::SeqCst);
    failing.down.store(true, Ordering::SeqCst);
    let b = pattern(71, MIB as usize);
    write(&vol, 8 * MIB, &b).await;
    vol.flush().await.unwrap();
    assert_eq!(read(&vol, 8 * MIB, b.len()).await, b);
    // ...and sync fails with a clear error once the timeout has passed.
    let err = vol.sync().await.unwrap_err();
    assert!(
        matches!(err, VolumeError::StoreUnavailable { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("object store unavailable for"),
        "{err}"
    );
    assert!(vol.dirty_bytes() > 0);

    // The store comes back: everything acknowledged reaches it.
    failing.down.store(false, Ordering::SeqCst);
    vol.sync().await.unwrap();
    vol.close().await.unwrap();
    let fresh = env.store("b").await;
    let vol = fresh.open_volume("f").await.unwrap();
    assert_eq!(read(&vol, 0, a.len()).await, a);
    assert_eq!(read(&vol, 8 * MIB, b.len()).await, b);
    vol.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_uploader_beyond_the_dirty_limit() {
    let env = Env::new();
    let slow = FailingStore::over(&env.url());
    slow.delay_ms.store(30, Ordering::SeqCst);
    let mut config = env.config("a");
    // No timed uploads: only the throttle makes the uploader run before sync.
    config.upload_delay = Duration::from_secs(3600);
    config.dirty_limit = MIB;
    config.store_timeout = Duration::from_secs(2);
    let store = Store::open_with_object_store(config, slow.clone())
        .await
        .unwrap();
    store.create_volume("t", 16 * MIB).await.unwrap();
    let vol = store.open_volume("t").await.unwrap();
    let data = pattern(80, 8 * MIB as usize);
    for i in 0..32 {
        let piece = data.slice(i * 256 * 1024..(i + 1) * 256 * 1024);
        write(&vol, i as u64 * 256 * 1024, &piece).await;
        assert!(
            vol.dirty_bytes() <= MIB,
            "{} bytes dirty after write {i}",
            vol.dirty_bytes()
        );
    }
    assert!(
        slow.segment_puts.load(Ordering::SeqCst) > 0,
        "no upload before sync: writes did not wait for the uploader"
    );
    assert_eq!(read(&vol, 0, data.len()).await, data);

    // With the store down the buffer fills, and the next write that needs
    // room fails with a clear error after the store timeout instead of hanging.
    vol.sync().await.unwrap();
    slow.down.store(true, Ordering::SeqCst);
    let more = pattern(81, 5 * 256 * 1024);
    for i in 0..4u64 {
        let piece = more.slice(i as usize * 256 * 1024..(i as usize + 1) * 256 * 1024);
        write(&vol, 8 * MIB + i * 256 * 1024, &piece).await;
    }
    let err = vol
        .write(9 * MIB, more.slice(4 * 256 * 1024..), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("write buffer of volume `t` is full"), "{err}");
    slow.down.store(false, Ordering::SeqCst);
    vol.close().await.unwrap();
    let vol = env.store("b").await.open_volume("t").await.unwrap();
    assert_eq!(read(&vol, 0, data.len()).await, data);
    assert_eq!(
        read(&vol, 8 * MIB, MIB as usize).await,
        more.slice(..MIB as usize)
    );
    vol.close().await.unwrap();
}
