//! Proves the `object_store` <-> Garage configuration the volume engine uses, against a real
//! Garage server: PUT, GET, ranged GET, LIST, DELETE, and data surviving a server restart.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use wisp_testkit::{unique_prefix, Garage};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn put_get_range_list_delete() {
    let garage = Garage::shared();
    let store = garage.s3_builder().build().expect("build the S3 store");
    let prefix = unique_prefix("basic");
    let big = Path::from(format!("{prefix}/segments/0001"));
    let small = Path::from(format!("{prefix}/meta/snapshot"));
    // 3 MiB + a bit: larger than one read buffer, not a multiple of anything round.
    let data = pattern(3 * 1024 * 1024 + 123, 7);

    store
        .put(&big, PutPayload::from(data.clone()))
        .await
        .expect("put segment");
    store
        .put(&small, PutPayload::from_static(b"hello"))
        .await
        .expect("put snapshot");

    let got = store.get(&big).await.expect("get").bytes().await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "whole-object GET returned different bytes");

    let range = 1_000_000..1_004_096;
    let part = store
        .get_range(&big, range.clone())
        .await
        .expect("ranged get");
    assert_eq!(part, Bytes::copy_from_slice(&data[1_000_000..1_004_096]));

    let parts = store
        .get_ranges(&big, &[0..10, 3 * 1024 * 1024..3 * 1024 * 1024 + 123])
        .await
        .expect("several ranges");
    assert_eq!(parts[0], Bytes::copy_from_slice(&data[..10]));
    assert_eq!(parts[1], Bytes::copy_from_slice(&data[3 * 1024 * 1024..]));

    let head = store.head(&big).await.expect("head");
    assert_eq!(head.size as usize, data.len());

    let mut listed: Vec<String> = store
        .list(Some(&Path::from(prefix.clone())))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    listed.sort();
    assert_eq!(listed, vec![small.to_string(), big.to_string()]);

    let segments = store
        .list_with_delimiter(Some(&Path::from(format!("{prefix}/segments"))))
        .await
        .expect("list with delimiter");
    assert_eq!(segments.objects.len(), 1);

    store.delete(&big).await.expect("delete");
    let err = store.get(&big).await.expect_err("deleted object is gone");
    assert!(
        matches!(err, object_store::Error::NotFound { .. }),
        "expected NotFound, got {err:?}"
    );
    let left: Vec<_> = store
        .list(Some(&Path::from(prefix.clone())))
        .try_collect()
        .await
        .expect("list after delete");
    assert_eq!(left.len(), 1);
}

#[tokio::test]
async fn env_vars_configure_from_env_builder() {
    let garage = Garage::shared();
    // `from_env` reads the process environment; build the same builder from the pairs so
    // that tests running in parallel do not race on `std::env::set_var`.
    let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(&garage.bucket);
    for (key, value) in garage.env_vars() {
        let config_key = key
            .to_ascii_lowercase()
            .parse()
            .unwrap_or_else(|e| panic!("object_store does not know `{key}`: {e}"));
        builder = builder.with_config(config_key, value);
    }
    let store = builder.build().expect("build from env pairs");
    let path = Path::from(format!("{}/x", unique_prefix("env")));
    store
        .put(&path, PutPayload::from_static(b"via env"))
        .await
        .expect("put through env-configured store");
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"via env");
    assert!(garage.store_url("/vols").starts_with("s3://wisp/vols"));
}

#[tokio::test]
async fn stop_and_restart_keep_data() {
    let mut garage = Garage::start();
    let store = garage.s3_builder().build().expect("build the S3 store");
    let path = Path::from("durable/object");
    let data = pattern(200_000, 3);
    store
        .put(&path, PutPayload::from(data.clone()))
        .await
        .expect("put before stop");

    garage.stop();
    assert!(!garage.is_running());
    // A client with no retries sees the outage as an error, not as missing data.
    let no_retry = garage
        .s3_builder()
        .with_retry(object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    let err = no_retry.get(&path).await.expect_err("server is down");
    assert!(
        !matches!(err, object_store::Error::NotFound { .. }),
        "a stopped server must not look like a missing object: {err:?}"
    );

    garage.restart();
    assert!(garage.is_running());
    let got = store
        .get(&path)
        .await
        .expect("get after restart")
        .bytes()
        .await
        .unwrap();
    assert!(got == data, "data changed across restart");
    // Writes work again too.
    store
        .put(&Path::from("durable/after"), PutPayload::from_static(b"ok"))
        .await
        .expect("put after restart");
}
