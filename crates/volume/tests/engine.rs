//! Engine tests over real file:// stores in temporary folders: data path,
//! checkpoints, restore, fork, diff, gc, corruption, portability, crashes.

mod common;

use common::*;
use wisp_nbd::BlockDevice;
use wisp_volume::{GcOptions, Store, VolumeError};

#[tokio::test]
async fn writes_read_back_and_unwritten_ranges_are_zeros() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("data", 64 * MIB).await.unwrap();
    let vol = store.open_volume("data").await.unwrap();
    assert_eq!(vol.size(), 64 * MIB);
    // Unaligned, spanning a chunk boundary (chunks are 256 KiB).
    let a = pattern(1, 300_000);
    write(&vol, 200_000, &a).await;
    let b = pattern(2, 4096);
    write(&vol, 40 * MIB, &b).await;
    assert_eq!(read(&vol, 200_000, a.len()).await, a);
    assert_eq!(read(&vol, 40 * MIB, 4096).await, b);
    assert!(read(&vol, 10 * MIB, 1 << 20).await.iter().all(|x| *x == 0));
    // Trim inside written data reads back as zeros, the rest survives.
    vol.trim(200_000 + 4096, 8192).await.unwrap();
    let got = read(&vol, 200_000, a.len()).await;
    assert!(got[4096..4096 + 8192].iter().all(|x| *x == 0));
    assert_eq!(got[..4096], a[..4096]);
    assert_eq!(got[12288..], a[12288..]);
    // Out of range is an error, not a panic.
    assert!(vol.read(64 * MIB - 10, 20).await.is_err());
    vol.close().await.unwrap();
    // After close everything is in the bucket: a fresh cache reads the same.
    let other = env.store("b").await;
    let vol = other.open_volume("data").await.unwrap();
    let got = read(&vol, 200_000, a.len()).await;
    assert!(got[4096..4096 + 8192].iter().all(|x| *x == 0));
    assert_eq!(got[12288..], a[12288..]);
    assert_eq!(read(&vol, 40 * MIB, 4096).await, b);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn names_sizes_and_missing_volumes_give_clear_errors() {
    let env = Env::new();
    let store = env.store("a").await;
    assert!(matches!(
        store.create_volume("bad/name", MIB).await,
        Err(VolumeError::InvalidName(_))
    ));
    assert!(matches!(
        store.create_volume("x", 1000).await,
        Err(VolumeError::InvalidSize(1000))
    ));
    let err = store.open_volume("nope").await.err().unwrap();
    assert_eq!(err.to_string(), "volume `nope` does not exist");
    store.create_volume("x", MIB).await.unwrap();
    assert!(matches!(
        store.create_volume("x", MIB).await,
        Err(VolumeError::AlreadyExists(_))
    ));
    let list = store.list_volumes().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].url.ends_with(&format!("/volumes/{}", list[0].id)));
    let vol = store.open_volume("x").await.unwrap();
    let err = store.open_volume("x").await.err().unwrap().to_string();
    assert!(err.starts_with("volume `x` is in use by host"), "{err}");
    let err = vol.restore("v7").await.unwrap_err().to_string();
    assert_eq!(err, "checkpoint `v7` of volume `x` does not exist");
    vol.close().await.unwrap();
    store.delete_volume("x").await.unwrap();
    assert!(store.list_volumes().await.unwrap().is_empty());
}

#[tokio::test]
async fn checkpoint_restore_fork_and_diff() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("base", 16 * MIB).await.unwrap();
    let vol = store.open_volume("base").await.unwrap();
    let one = pattern(10, MIB as usize);
    write(&vol, 0, &one).await;
    let v0 = vol.checkpoint(Some("first".into())).await.unwrap();
    assert_eq!(v0.id, "v0");
    let two = pattern(11, 256 * 1024);
    write(&vol, 4 * MIB, &two).await;
    write(&vol, 0, &pattern(12, 4096)).await;
    let v1 = vol.checkpoint(None).await.unwrap();
    assert_eq!(v1.id, "v1");
    // Changes after v1, then restore to v0: back to the first state.
    write(&vol, 8 * MIB, &pattern(13, 4096)).await;
    assert_eq!(
        vol.diff("v0", Some("v1")).await.unwrap(),
        vec![0..256 * 1024, 4 * MIB..4 * MIB + 256 * 1024]
    );
    let now = vol.diff("v1", None).await.unwrap();
    assert_eq!(now, vec![8 * MIB..8 * MIB + 256 * 1024]);
    vol.restore("v0").await.unwrap();
    assert_eq!(read(&vol, 0, MIB as usize).await, one);
    assert!(read(&vol, 4 * MIB, 256 * 1024)
        .await
        .iter()
        .all(|x| *x == 0));
    assert!(read(&vol, 8 * MIB, 4096).await.iter().all(|x| *x == 0));
    assert!(vol.diff("v0", None).await.unwrap().is_empty());
    // Later checkpoints survive a restore (git checkout, not rewind).
    assert_eq!(checkpoint_ids(&vol).await, ["v0", "v1"]);
    vol.restore("v1").await.unwrap();
    assert_eq!(read(&vol, 4 * MIB, 256 * 1024).await, two);
    vol.restore("v0").await.unwrap();
    // A checkpoint of a restored state is a new number.
    assert_eq!(vol.checkpoint(None).await.unwrap().id, "v2");

    // Fork v1 while the source stays open; both sides diverge independently.
    let forked = store.fork("base", "v1", "copy").await.unwrap();
    assert_eq!(forked.origin.as_deref(), Some("base@v1"));
    let copy = store.open_volume("copy").await.unwrap();
    assert_eq!(read(&copy, 4 * MIB, 256 * 1024).await, two);
    assert_eq!(read(&copy, 0, 4096).await, pattern(12, 4096));
    write(&copy, 4 * MIB, &pattern(14, 4096)).await;
    assert_eq!(read(&vol, 4 * MIB, 4096).await, vec![0u8; 4096]);
    copy.close().await.unwrap();
    vol.close().await.unwrap();
    assert!(matches!(
        store.fork("base", "v9", "x").await,
        Err(VolumeError::CheckpointNotFound { .. })
    ));
    // A fork may be larger than its source (a sprite's `storage_gb`): the source's data,
    // then zeros to the new end, writable; a smaller size keeps the source's.
    let big = store
        .fork_sized("base", "v1", "bigger", Some(64 * MIB))
        .await
        .unwrap();
    assert_eq!(big.size, 64 * MIB);
    let bigger = store.open_volume("bigger").await.unwrap();
    assert_eq!(read(&bigger, 4 * MIB, 256 * 1024).await, two);
    assert!(read(&bigger, 60 * MIB, 4096).await.iter().all(|x| *x == 0));
    write(&bigger, 60 * MIB, &pattern(15, 4096)).await;
    assert_eq!(read(&bigger, 60 * MIB, 4096).await, pattern(15, 4096));
    bigger.close().await.unwrap();
    let same = store
        .fork_sized("base", "v1", "not-smaller", Some(MIB))
        .await
        .unwrap();
    assert_eq!(same.size, 16 * MIB);
    // The fork reads the same on another host.
    let other = env.store("b").await;
    let copy = other.open_volume("copy").await.unwrap();
    assert_eq!(read(&copy, 4 * MIB, 4096).await, pattern(14, 4096));
    assert_eq!(
        read(&copy, 4 * MIB + 4096, 4096).await,
        two.slice(4096..8192)
    );
    copy.close().await.unwrap();
}

#[tokio::test]
async fn gc_frees_garbage_but_keeps_what_checkpoints_and_forks_need() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("src", 8 * MIB).await.unwrap();
    let vol = store.open_volume("src").await.unwrap();
    let kept = pattern(20, 2 * MIB as usize);
    write(&vol, 0, &kept).await;
    vol.checkpoint(None).await.unwrap();
    // Overwritten twice without a checkpoint: the middle version is garbage.
    write(&vol, 4 * MIB, &pattern(21, MIB as usize)).await;
    vol.sync().await.unwrap();
    write(&vol, 4 * MIB, &pattern(22, MIB as usize)).await;
    vol.close().await.unwrap();
    store.fork("src", "v0", "child").await.unwrap();
    let no_compaction = GcOptions {
        grace: std::time::Duration::ZERO,
        compact_below: 0.0,
    };
    let report = store.gc(no_compaction.clone()).await.unwrap();
    assert!(report.objects_deleted >= 1, "{report:?}");
    assert!(report.bytes_freed > 0);
    // The source is deleted: the child still needs its v0 data.
    store.delete_volume("src").await.unwrap();
    let report = store.gc(no_compaction.clone()).await.unwrap();
    assert_eq!(report.objects_deleted, 0, "{report:?}");
    let fresh = env.store("b").await;
    let child = fresh.open_volume("child").await.unwrap();
    assert_eq!(read(&child, 0, kept.len()).await, kept);
    // Once the child overwrote everything it needed and is deleted too, all goes.
    child.close().await.unwrap();
    fresh.delete_volume("child").await.unwrap();
    let report = store.gc(no_compaction).await.unwrap();
    assert!(report.objects_deleted > 0);
    assert!(env.segment_files().is_empty(), "{:?}", env.segment_files());
}

#[tokio::test]
async fn deleting_a_checkpoint_keeps_every_other_state_and_gc_frees_what_only_it_held() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("h", 8 * MIB).await.unwrap();
    let vol = store.open_volume("h").await.unwrap();
    // v0: 1 MiB that v1 overwrites whole (only v0 holds it), and 1 MiB kept.
    let old = pattern(50, MIB as usize);
    let kept = pattern(51, MIB as usize);
    write(&vol, 0, &old).await;
    vol.sync().await.unwrap(); // a segment of its own
    write(&vol, 2 * MIB, &kept).await;
    vol.checkpoint(None).await.unwrap();
    let newer = pattern(52, MIB as usize);
    write(&vol, 0, &newer).await;
    vol.checkpoint(None).await.unwrap(); // v1
    let later = pattern(53, MIB as usize);
    write(&vol, 4 * MIB, &later).await;
    vol.checkpoint(None).await.unwrap(); // v2
    write(&vol, 6 * MIB, &pattern(54, 4096)).await;
    store.fork("h", "v1", "f").await.unwrap();
    let no_compaction = GcOptions {
        grace: std::time::Duration::ZERO,
        compact_below: 0.0,
    };
    vol.sync().await.unwrap();
    store.gc(no_compaction.clone()).await.unwrap();
    // The head stands on v2 and fork `f` on v1: both refused, naming why.
    let err = vol.delete_checkpoint("v2").await.unwrap_err();
    assert!(matches!(err, VolumeError::CheckpointInUse { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "checkpoint `v2` of volume `h` is still needed: the volume's current state stands on it (its newest checkpoint, or the one last restored)"
    );
    let err = vol.delete_checkpoint("v1").await.unwrap_err().to_string();
    assert_eq!(
        err,
        "checkpoint `v1` of volume `h` is still needed: volume `f` was forked from it"
    );
    assert!(matches!(
        vol.delete_checkpoint("v9").await,
        Err(VolumeError::CheckpointNotFound { .. })
    ));
    // v0 goes; the data only it held is garbage for the next gc.
    vol.delete_checkpoint("v0").await.unwrap();
    assert_eq!(checkpoint_ids(&vol).await, ["v1", "v2"]);
    assert!(matches!(
        vol.restore("v0").await,
        Err(VolumeError::CheckpointNotFound { .. })
    ));
    assert_eq!(read(&vol, 0, newer.len()).await, newer);
    assert_eq!(read(&vol, 2 * MIB, kept.len()).await, kept);
    let report = store.gc(no_compaction.clone()).await.unwrap();
    assert!(report.bytes_freed >= MIB, "{report:?}");
    // Every remaining state reads as before, on this host and on a fresh one
    // (which replays the shipped log).
    vol.restore("v1").await.unwrap();
    assert_eq!(read(&vol, 0, newer.len()).await, newer);
    assert_eq!(read(&vol, 2 * MIB, kept.len()).await, kept);
    assert!(read(&vol, 4 * MIB, 4096).await.iter().all(|b| *b == 0));
    vol.close().await.unwrap();
    let fresh = env.store("b").await;
    let fork = fresh.open_volume("f").await.unwrap();
    assert_eq!(read(&fork, 0, newer.len()).await, newer);
    assert_eq!(read(&fork, 2 * MIB, kept.len()).await, kept);
    fork.close().await.unwrap();
    let vol = fresh.open_volume("h").await.unwrap();
    vol.restore("v2").await.unwrap();
    assert_eq!(read(&vol, 0, newer.len()).await, newer);
    assert_eq!(read(&vol, 2 * MIB, kept.len()).await, kept);
    assert_eq!(read(&vol, 4 * MIB, later.len()).await, later);
    // Once the fork is deleted (and nothing forked from it), v1 may go too;
    // the head now stands on v2's successor, so only v2 stays refused.
    fresh.delete_volume("f").await.unwrap();
    vol.delete_checkpoint("v1").await.unwrap();
    assert_eq!(read(&vol, 4 * MIB, later.len()).await, later);
    assert_eq!(read(&vol, 0, newer.len()).await, newer);
    // The newest checkpoint, once nothing stands on it, goes too, and its
    // number is not given again.
    assert_eq!(vol.checkpoint(None).await.unwrap().id, "v3");
    vol.restore("v2").await.unwrap();
    vol.delete_checkpoint("v3").await.unwrap();
    assert_eq!(vol.checkpoint(None).await.unwrap().id, "v4");
    vol.close().await.unwrap();
    let vol = store.open_volume("h").await.unwrap();
    assert_eq!(vol.checkpoint(None).await.unwrap().id, "v5");
    vol.close().await.unwrap();
}

#[tokio::test]
async fn a_fork_can_start_with_its_fork_point_as_v0() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("src", 4 * MIB).await.unwrap();
    let vol = store.open_volume("src").await.unwrap();
    let data = pattern(60, MIB as usize);
    write(&vol, 0, &data).await;
    vol.checkpoint(None).await.unwrap();
    vol.close().await.unwrap();
    let info = store
        .fork_with_checkpoint("src", "v0", "f", "fork of src@v0".into())
        .await
        .unwrap();
    assert_eq!(info.origin.as_deref(), Some("src@v0"));
    let fresh = env.store("b").await;
    let fork = fresh.open_volume("f").await.unwrap();
    let list = fork.checkpoints().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].id.as_str(), list[0].comment.as_deref()),
        ("v0", Some("fork of src@v0"))
    );
    write(&fork, 0, &pattern(61, 4096)).await;
    assert_eq!(fork.checkpoint(None).await.unwrap().id, "v1");
    fork.restore("v0").await.unwrap();
    assert_eq!(read(&fork, 0, data.len()).await, data);
    assert!(fork.diff("v0", Some("v1")).await.unwrap().len() == 1);
    fork.close().await.unwrap();
}

#[tokio::test]
async fn compaction_rewrites_sparse_segments_and_keeps_data() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("v", 8 * MIB).await.unwrap();
    let vol = store.open_volume("v").await.unwrap();
    let data = pattern(30, 4 * MIB as usize);
    write(&vol, 0, &data).await;
    vol.sync().await.unwrap();
    // Overwrite 3/4 of it: the first segment becomes mostly dead.
    let newer = pattern(31, 3 * MIB as usize);
    write(&vol, MIB, &newer).await;
    vol.close().await.unwrap();
    let report = store
        .gc(GcOptions {
            grace: std::time::Duration::ZERO,
            compact_below: 0.5,
        })
        .await
        .unwrap();
    assert!(report.segments_compacted >= 1, "{report:?}");
    assert!(report.bytes_freed > 0, "{report:?}");
    let fresh = env.store("b").await;
    let vol = fresh.open_volume("v").await.unwrap();
    assert_eq!(
        read(&vol, 0, MIB as usize).await,
        data.slice(..MIB as usize)
    );
    assert_eq!(read(&vol, MIB, newer.len()).await, newer);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_segment_is_an_io_error_naming_the_object() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("c", 4 * MIB).await.unwrap();
    let vol = store.open_volume("c").await.unwrap();
    write(&vol, 0, &pattern(40, 256 * 1024)).await;
    vol.close().await.unwrap();
    let segs = env.segment_files();
    assert_eq!(segs.len(), 1);
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&segs[0], bytes).unwrap();
    let fresh = env.store("b").await;
    let vol = fresh.open_volume("c").await.unwrap();
    let err = vol.read(0, 4096).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("corrupt extent in object `volumes/"), "{msg}");
    assert!(
        msg.contains("checksum mismatch") || msg.contains("decompress"),
        "{msg}"
    );
    // A missing object is an error too, never zeros.
    std::fs::remove_file(&segs[0]).unwrap();
    let err = vol.read(0, 4096).await.unwrap_err().to_string();
    assert!(err.contains("segments/"), "{err}");
    drop(vol);
}

#[tokio::test]
async fn portable_across_cache_dirs_and_after_losing_the_local_database() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("p", 32 * MIB).await.unwrap();
    let vol = store.open_volume("p").await.unwrap();
    let mut expected = vec![0u8; 32 * MIB as usize];
    for i in 0..40u64 {
        let off = (i * 7919 * 4096) % (31 * MIB);
        let data = pattern(100 + i, 4096 * (1 + i as usize % 5));
        write(&vol, off, &data).await;
        expected[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    vol.checkpoint(Some("mid".into())).await.unwrap();
    write(&vol, 0, &pattern(99, 8192)).await;
    expected[..8192].copy_from_slice(&pattern(99, 8192));
    vol.sync().await.unwrap();
    let info = vol.info();
    vol.close().await.unwrap();
    // Host B: empty cache dir.
    let b = env.store("b").await;
    let vol = b.open_volume("p").await.unwrap();
    assert_eq!(read(&vol, 0, expected.len()).await, expected);
    assert_eq!(
        vol.checkpoints().await.unwrap()[0].comment.as_deref(),
        Some("mid")
    );
    vol.close().await.unwrap();
    // Host A again, after losing its local metadata database.
    let db = env.dir.path().join("a").join(&info.id).join("meta.db");
    assert!(db.exists());
    std::fs::remove_file(&db).unwrap();
    let vol = store.open_volume("p").await.unwrap();
    assert_eq!(read(&vol, 0, expected.len()).await, expected);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn fork_sees_checkpoints_another_host_made_after_this_hosts_copy() {
    let env = Env::new();
    let a = env.store("a").await;
    a.create_volume("src", 4 * MIB).await.unwrap();
    let vol = a.open_volume("src").await.unwrap();
    write(&vol, 0, &pattern(1, 4096)).await;
    vol.checkpoint(None).await.unwrap();
    vol.close().await.unwrap();
    // Forking from this host's own up-to-date copy of the metadata.
    a.fork("src", "v0", "f0").await.unwrap();
    // Host B moves the volume on; host A's local copy is now behind.
    let b = env.store("b").await;
    let vol = b.open_volume("src").await.unwrap();
    write(&vol, 0, &pattern(2, 4096)).await;
    assert_eq!(vol.checkpoint(None).await.unwrap().id, "v1");
    vol.close().await.unwrap();
    a.fork("src", "v1", "f1").await.unwrap();
    for (name, seed) in [("f0", 1), ("f1", 2)] {
        let v = a.open_volume(name).await.unwrap();
        assert_eq!(read(&v, 0, 4096).await, pattern(seed, 4096), "{name}");
        v.close().await.unwrap();
    }
    let missing = a.fork("src", "v2", "f2").await.unwrap_err();
    assert!(missing.to_string().contains("v2"), "{missing}");
}

#[tokio::test]
async fn flushed_writes_survive_a_crash_and_are_uploaded_on_reopen() {
    let env = Env::new();
    let mut config = env.config("a");
    // No background upload during the test: the data is only in the cache.
    config.upload_delay = std::time::Duration::from_secs(3600);
    let store = wisp_volume::Store::open(config.clone()).await.unwrap();
    store.create_volume("k", 8 * MIB).await.unwrap();
    let vol = store.open_volume("k").await.unwrap();
    let data = pattern(50, 3 * 256 * 1024 + 512);
    write(&vol, 100_000, &data).await;
    vol.flush().await.unwrap();
    // "Crash": drop without close (no sync, no snapshot, lease left behind).
    drop(vol);
    drop(store);
    let store = wisp_volume::Store::open(config).await.unwrap();
    let vol = store.open_volume("k").await.unwrap();
    assert_eq!(read(&vol, 100_000, data.len()).await, data);
    vol.close().await.unwrap();
    let b = env.store("b").await;
    let vol = b.open_volume("k").await.unwrap();
    assert_eq!(read(&vol, 100_000, data.len()).await, data);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn import_skips_zero_chunks_and_export_round_trips() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("img", 8 * MIB).await.unwrap();
    let src = env.dir.path().join("in.raw");
    let mut raw = vec![0u8; 5 * MIB as usize + 4096];
    raw[..MIB as usize].copy_from_slice(&pattern(60, MIB as usize));
    raw[3 * MIB as usize..3 * MIB as usize + 4096].copy_from_slice(&pattern(61, 4096));
    std::fs::write(&src, &raw).unwrap();
    let vol = store.open_volume("img").await.unwrap();
    let done = std::sync::atomic::AtomicU64::new(0);
    vol.import_file(&src, &|d, _| {
        done.store(d, std::sync::atomic::Ordering::SeqCst)
    })
    .await
    .unwrap();
    assert_eq!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        raw.len() as u64
    );
    vol.checkpoint(None).await.unwrap();
    let out = env.dir.path().join("out.raw");
    vol.export_file(&out, &|_, _| {}).await.unwrap();
    vol.close().await.unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len() as u64, 8 * MIB);
    assert_eq!(&got[..raw.len()], &raw[..]);
    // Only the chunks with data were stored: 4 (first MiB) + 1.
    let stored: u64 = env
        .segment_files()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(stored <= 5 * 256 * 1024, "stored {stored}");
    let out2 = env.dir.path().join("out2.raw");
    store
        .export_checkpoint("img", "v0", &out2, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out2).unwrap(), got);
}

#[tokio::test]
async fn compacting_a_forked_volume_keeps_both_readable_and_waits_for_running_forks() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("base", 32 * MIB).await.unwrap();
    let vol = store.open_volume("base").await.unwrap();
    // 64 chunks: one segment. Overwriting 3/4 of them before the checkpoint
    // leaves that segment mostly dead, though checkpoint v0 (shared with the
    // fork) still reads its first quarter.
    let data = pattern(50, 16 * MIB as usize);
    write(&vol, 0, &data).await;
    vol.sync().await.unwrap();
    let newer = pattern(51, 12 * MIB as usize);
    write(&vol, 4 * MIB, &newer).await;
    vol.checkpoint(None).await.unwrap();
    vol.close().await.unwrap();
    let mut expected = data.slice(..4 * MIB as usize).to_vec();
    expected.extend_from_slice(&newer);
    let before = env.segment_files();
    assert_eq!(before.len(), 2, "{before:?}");

    // The fork runs on another host across the compaction: its map was read
    // before, so it still names the old segment.
    store.fork("base", "v0", "child").await.unwrap();
    let other = env.store("b").await;
    let child = other.open_volume("child").await.unwrap();
    let options = GcOptions {
        grace: std::time::Duration::ZERO,
        compact_below: 0.5,
    };
    let report = store.gc(options.clone()).await.unwrap();
    assert_eq!(report.segments_compacted, 1, "{report:?}");
    assert_eq!(report.segments_held, 1, "{report:?}");
    assert_eq!(report.objects_deleted, 0, "{report:?}");
    assert!(
        before.iter().all(|p| p.exists()),
        "gc deleted a segment a running fork still reads"
    );
    assert_eq!(read(&child, 0, expected.len()).await, expected);
    let base = store.open_volume("base").await.unwrap();
    assert_eq!(read(&base, 0, expected.len()).await, expected);
    base.close().await.unwrap();

    // Nothing runs any more: the compacted-away segment goes, nothing else.
    child.close().await.unwrap();
    let report = store.gc(options).await.unwrap();
    assert_eq!(report.segments_held, 0, "{report:?}");
    assert_eq!(report.objects_deleted, 1, "{report:?}");
    let gone: Vec<_> = before.iter().filter(|p| !p.exists()).collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    // Both, opened on a fresh host, read the same bytes from the new segment.
    let third = env.store("c").await;
    for name in ["base", "child"] {
        let v = third.open_volume(name).await.unwrap();
        assert_eq!(read(&v, 0, expected.len()).await, expected, "{name}");
        v.close().await.unwrap();
    }
}

#[tokio::test]
async fn background_maintenance_frees_garbage_on_its_own() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("m", 8 * MIB).await.unwrap();
    let vol = store.open_volume("m").await.unwrap();
    write(&vol, 0, &pattern(60, MIB as usize)).await;
    vol.sync().await.unwrap();
    let last = pattern(61, MIB as usize);
    write(&vol, 0, &last).await;
    vol.close().await.unwrap();
    assert_eq!(env.segment_files().len(), 2);
    let runner = store.clone();
    let task = tokio::spawn(async move {
        runner
            .run_maintenance(
                std::time::Duration::from_millis(50),
                GcOptions {
                    grace: std::time::Duration::ZERO,
                    compact_below: 0.5,
                },
            )
            .await
    });
    // Not a timing assertion: wait (up to a generous bound) for it to happen.
    for _ in 0..200 {
        if env.segment_files().len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    task.abort();
    let _ = task.await;
    assert_eq!(env.segment_files().len(), 1, "{:?}", env.segment_files());
    // A later pass may have held the volume open for compaction when it was
    // aborted; the dropped volume lets go of its flock once its in-flight
    // upload or lease renewal ends.
    let mut attempts = 0;
    let vol = loop {
        match store.open_volume("m").await {
            Err(VolumeError::InUse { .. }) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(read(&vol, 0, last.len()).await, last);
    vol.close().await.unwrap();
}

#[tokio::test]
async fn a_reopened_volume_reads_its_cache_without_downloading() {
    use std::sync::atomic::Ordering;
    let env = Env::new();
    let counting = FailingStore::over(&env.url());
    let store = Store::open_with_object_store(env.config("a"), counting.clone())
        .await
        .unwrap();
    let info = store.create_volume("w", 16 * MIB).await.unwrap();
    let vol = store.open_volume("w").await.unwrap();
    let data = pattern(70, 8 * MIB as usize);
    write(&vol, 0, &data).await;
    vol.close().await.unwrap();

    // Reopened on the same host and cache dir: every chunk comes from the cache.
    let vol = store.open_volume("w").await.unwrap();
    counting.segment_gets.store(0, Ordering::SeqCst);
    assert_eq!(read(&vol, 0, data.len()).await, data);
    assert_eq!(counting.segment_gets.load(Ordering::SeqCst), 0);
    vol.close().await.unwrap();

    // A chunk torn in the cache file (as by a crash) fails its checksum and
    // is fetched again: right bytes, one GET.
    let cache = env.dir.path().join("a").join(&info.id).join("cache");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&cache)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 512], 3 * 256 * 1024 + 100).unwrap();
    drop(f);
    let vol = store.open_volume("w").await.unwrap();
    counting.segment_gets.store(0, Ordering::SeqCst);
    assert_eq!(read(&vol, 0, data.len()).await, data);
    assert_eq!(counting.segment_gets.load(Ordering::SeqCst), 1);
    vol.close().await.unwrap();
}

/// The content generation a saved VM state is checked against: it moves with every
/// open that writes and with a restore, and with nothing else (opens, reads,
/// checkpoints, other hosts' opens).
#[tokio::test]
async fn the_generation_moves_only_when_the_content_may_have() {
    let env = Env::new();
    let store = env.store("a").await;
    store.create_volume("g", 16 * MIB).await.unwrap();
    let vol = store.open_volume("g").await.unwrap();
    let g0 = vol.generation().unwrap();
    write(&vol, 0, &pattern(1, 4096)).await;
    let g1 = vol.generation().unwrap();
    assert_ne!(g0, g1, "a write moves it");
    write(&vol, MIB, &pattern(2, 4096)).await;
    assert_eq!(vol.generation().unwrap(), g1, "once per open");
    vol.checkpoint(None).await.unwrap();
    assert_eq!(vol.generation().unwrap(), g1, "a checkpoint does not");
    vol.close().await.unwrap();

    let vol = store.open_volume("g").await.unwrap();
    let _ = read(&vol, 0, 4096).await;
    assert_eq!(vol.generation().unwrap(), g1, "an open and a read do not");
    vol.close().await.unwrap();
    let elsewhere = env.store("b").await.open_volume("g").await.unwrap();
    assert_eq!(
        elsewhere.generation().unwrap(),
        g1,
        "another host sees the same"
    );
    write(&elsewhere, 0, &pattern(3, 4096)).await;
    let g2 = elsewhere.generation().unwrap();
    assert_ne!(g2, g1);
    elsewhere.close().await.unwrap();

    let vol = store.open_volume("g").await.unwrap();
    assert_eq!(
        vol.generation().unwrap(),
        g2,
        "this host learns the other's write"
    );
    vol.restore("v0").await.unwrap();
    assert_ne!(vol.generation().unwrap(), g2, "a restore moves it");
    vol.close().await.unwrap();
}

async fn checkpoint_ids(vol: &wisp_volume::Volume) -> Vec<String> {
    let list = vol.checkpoints().await.unwrap();
    list.into_iter().map(|c| c.id).collect()
}
