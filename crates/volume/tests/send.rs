//! The control plane calls the engine from axum handlers and `tokio::spawn`:
//! the futures of the public async API must be `Send`. This fails to compile
//! otherwise; the futures are created and dropped, never polled.

use std::path::Path;

use wisp_volume::{GcOptions, Store, StoreConfig};

fn assert_send<T: Send>(_: &T) {}

#[tokio::test]
async fn public_futures_are_send() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("store").display());
    let store = Store::open(StoreConfig::new(url, dir.path().join("cache")))
        .await
        .unwrap();
    store.create_volume("s", 1 << 20).await.unwrap();
    assert_send(&Store::open(StoreConfig::new("memory://", dir.path())));
    assert_send(&store.create_volume("x", 1 << 20));
    assert_send(&store.list_volumes());
    assert_send(&store.volume_info("s"));
    assert_send(&store.delete_volume("s"));
    assert_send(&store.open_volume("s"));
    assert_send(&store.fork("s", "v0", "y"));
    assert_send(&store.gc(GcOptions::default()));
    assert_send(&store.gc_with_progress(GcOptions::default(), &|_, _| {}));
    assert_send(&store.run_maintenance(std::time::Duration::from_secs(1), GcOptions::default()));
    let progress = |_: u64, _: u64| {};
    assert_send(&store.export_checkpoint("s", "v0", Path::new("/dev/null"), &progress));
    let vol = store.open_volume("s").await.unwrap();
    assert_send(&vol.checkpoint(None));
    assert_send(&vol.checkpoints());
    assert_send(&vol.restore("v0"));
    assert_send(&vol.diff("v0", None));
    assert_send(&vol.sync());
    assert_send(&vol.import_file(Path::new("/dev/null"), &progress));
    assert_send(&vol.export_file(Path::new("/dev/null"), &progress));
    assert_send(&vol.clone().close());
    vol.close().await.unwrap();
}
