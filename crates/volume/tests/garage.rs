//! The engine against a real Garage S3 server: portability between two
//! "hosts" (cache dirs) through `s3://` URLs, and a Garage outage (stopped,
//! then restarted) that loses no acknowledged data.

mod common;

use std::time::Duration;

use common::*;
use wisp_nbd::BlockDevice;
use wisp_testkit::Garage;
use wisp_volume::{Store, StoreConfig, VolumeError};

fn config(garage: &Garage, prefix: &str, cache: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(garage.store_url(prefix), cache);
    c.upload_delay = Duration::from_millis(100);
    c.store_timeout = Duration::from_secs(3);
    c
}

async fn open(garage: &Garage, prefix: &str, cache: &std::path::Path) -> Store {
    // Built like `s3://` URLs are, but with the fixture's settings passed
    // directly (no process-wide environment changes between tests).
    let s3 = garage.s3_builder().build().expect("s3 client");
    let store = object_store::prefix::PrefixStore::new(s3, prefix);
    Store::open_with_object_store(config(garage, prefix, cache), std::sync::Arc::new(store))
        .await
        .expect("open store on garage")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_between_hosts_through_garage() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&garage, "port", &dir.path().join("a")).await;
    a.create_volume("g", 32 * MIB).await.unwrap();
    let vol = a.open_volume("g").await.unwrap();
    let one = pattern(80, 3 * MIB as usize + 4096);
    write(&vol, 12345, &one).await;
    vol.checkpoint(None).await.unwrap();
    let two = pattern(81, 64 * 1024);
    write(&vol, 20 * MIB, &two).await;
    vol.close().await.unwrap();
    a.fork("g", "v0", "g2").await.unwrap();

    let b = open(&garage, "port", &dir.path().join("b")).await;
    let vol = b.open_volume("g").await.unwrap();
    assert_eq!(read(&vol, 12345, one.len()).await, one);
    assert_eq!(read(&vol, 20 * MIB, two.len()).await, two);
    vol.close().await.unwrap();
    let fork = b.open_volume("g2").await.unwrap();
    assert_eq!(read(&fork, 12345, one.len()).await, one);
    assert!(read(&fork, 20 * MIB, two.len())
        .await
        .iter()
        .all(|x| *x == 0));
    fork.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_outage_loses_no_acknowledged_data() {
    let mut garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&garage, "outage", &dir.path().join("a")).await;
    a.create_volume("o", 16 * MIB).await.unwrap();
    let vol = a.open_volume("o").await.unwrap();
    let one = pattern(90, MIB as usize);
    write(&vol, 0, &one).await;
    vol.sync().await.unwrap();
    garage.stop();
    let two = pattern(91, MIB as usize);
    write(&vol, 4 * MIB, &two).await;
    vol.flush().await.unwrap();
    let err = vol.sync().await.unwrap_err();
    assert!(
        matches!(err, VolumeError::StoreUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(read(&vol, 4 * MIB, two.len()).await, two);
    garage.restart();
    vol.sync().await.unwrap();
    vol.close().await.unwrap();
    let b = open(&garage, "outage", &dir.path().join("b")).await;
    let vol = b.open_volume("o").await.unwrap();
    assert_eq!(read(&vol, 0, one.len()).await, one);
    assert_eq!(read(&vol, 4 * MIB, two.len()).await, two);
    vol.close().await.unwrap();
}
