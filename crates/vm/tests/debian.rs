//! The `debian` image: debootstrap bookworm (minutes, from deb.debian.org),
//! built by the library, booted, and used the way a user would.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_image_boots_and_runs_python() {
    common::require_tool("debootstrap", "debootstrap");
    let mut env = common::env().await;
    let info = {
        let _guard = common::lock_file(&env.home.join("image-debian.lock"));
        wisp_vm::image::build(
            &env.store,
            &env.home,
            wisp_vm::ImageKind::Debian,
            false,
            &|l| eprintln!("debian: {l}"),
        )
        .await
        .expect("build the debian image")
    };
    env.image = info;
    let _slot = common::vm_slot();
    let name = common::unique("debian");
    let s = env.boot(&name).await;
    let py = s
        .sh("python3 -c 'import sys; print(sys.version_info[0] * 14)'")
        .await;
    assert_eq!(py.trim(), "42");
    let who = s.sh("su - sprite -c 'sudo -n id -u; echo $LANG'").await;
    assert_eq!(who, "0\nC.UTF-8\n");
    let tz = s
        .sh("date +%Z; test -x /usr/bin/git && test -x /usr/bin/curl && echo tools")
        .await;
    assert_eq!(tz, "UTC\ntools\n");
    s.stop().await;
    env.store.delete_volume(&name).await.unwrap();
}
