//! This process's stdio for a command running elsewhere (a VM, a sprite):
//! stdin read in chunks, output written through as it comes.

use std::io::Read;

use tokio::io::AsyncWriteExt;

/// Stdin in chunks as it is read; the channel closes at end of input. A
/// plain thread reads it, not tokio's blocking pool: a read blocked on the
/// terminal must not keep the runtime from shutting down.
pub fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Stdout and stderr, each flushed after every write so that output shows
/// as the command makes it.
pub struct Output {
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
}

impl Output {
    pub fn new() -> Output {
        Output {
            stdout: tokio::io::stdout(),
            stderr: tokio::io::stderr(),
        }
    }

    pub async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stdout.write_all(data).await?;
        self.stdout.flush().await
    }

    pub async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stderr.write_all(data).await?;
        self.stderr.flush().await
    }
}
