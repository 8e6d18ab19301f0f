//! Serves a file as an NBD export until Ctrl-C: `serve_file FILE LISTEN [SIZE]`
//! where LISTEN is `unix:PATH` or `tcp:HOST:PORT`; with SIZE the file is
//! created (sparse) with that many bytes. Used to compare against nbdkit.

use std::path::PathBuf;
use std::sync::Arc;

use wisp_nbd::{FileDevice, Listen, Server};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run().await {
        eprintln!("serve_file: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, listen, rest @ ..] = args.as_slice() else {
        return Err("usage: serve_file FILE LISTEN [SIZE]".into());
    };
    let file = PathBuf::from(file);
    let listen: Listen = listen.parse()?;
    let dev = match rest.first() {
        Some(size) => {
            let size: u64 = size.parse().map_err(|_| format!("invalid size `{size}`"))?;
            FileDevice::create(&file, size)?
        }
        None => FileDevice::open(&file, false)?,
    };
    let mut server = Server::new();
    server.add_export("file", Arc::new(dev));
    let bound = server.bind(&listen).await?;
    eprintln!("serving {} at {}", file.display(), bound.local_addr().uri());
    bound
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
