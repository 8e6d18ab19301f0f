//! The transmission phase: reads requests in a loop, runs each as its own task
//! (bounded in number and bytes), and writes replies through one writer task so
//! they may complete out of order.

use std::io::{self, IoSlice};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::handshake::block_sizes;
use crate::protocol::{self as p, Command, ExportLimits, RequestHeader};
use crate::{BlockDevice, NbdError};

/// Requests one connection may have in flight; more wait until one completes.
pub(crate) const MAX_IN_FLIGHT: u32 = 64;
/// Payload bytes (write data in, read data out) one connection may hold at once.
pub(crate) const MAX_IN_FLIGHT_BYTES: u32 = 4 * p::MAX_REQUEST_LEN;
/// Replies with data up to this size are copied next to their header so a
/// batch of small replies goes out in one write; bigger ones are written
/// vectored (header + data in one call) without a copy.
const COPY_LIMIT: usize = 64 * 1024;

/// A reply on its way to the writer task; dropping it releases its permits.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Bytes>,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Serves requests until the client disconnects, sends garbage, or `cancel`
/// fires; in-flight requests always finish and get their replies first.
pub(crate) async fn serve<R, W>(
    reader: R,
    writer: W,
    dev: Arc<dyn BlockDevice>,
    cancel: CancellationToken,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    let bytes = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES as usize));
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    // Fires on server shutdown, or when a reply write fails (the client is
    // gone), so the reader stops either way.
    let stop = cancel.child_token();
    let mut writer_task = AbortOnDrop(tokio::spawn(write_replies(writer, rx, stop.clone())));

    let limits = ExportLimits {
        size: dev.size(),
        read_only: dev.read_only(),
        min_block: block_sizes(dev.as_ref()).0,
    };
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let result = read_loop(&mut reader, &dev, limits, &slots, &bytes, &tx, &stop).await;

    // Wait for every request still running: each holds a slot until its reply
    // has been written (or dropped because the writer failed). Server shutdown
    // alone does not cut this short; a dead writer does.
    tokio::select! {
        _ = slots.acquire_many(MAX_IN_FLIGHT) => {}
        _ = writer_failed(&stop, &cancel) => {}
    }
    drop(tx);
    match (&mut writer_task.0).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "nbd reply writer stopped"),
        Err(e) => warn!(error = %e, "nbd reply writer panicked"),
    }
    result
}

/// Aborts the writer if the connection task is dropped (the server gave up
/// waiting for a client that does not read its replies), closing the socket.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes when `stop` fired for a reason other than server shutdown.
async fn writer_failed(stop: &CancellationToken, cancel: &CancellationToken) {
    stop.cancelled().await;
    if cancel.is_cancelled() {
        std::future::pending::<()>().await;
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    dev: &Arc<dyn BlockDevice>,
    limits: ExportLimits,
    slots: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    tx: &mpsc::UnboundedSender<Reply>,
    stop: &CancellationToken,
) -> Result<(), NbdError> {
    let mut hdr = [0u8; p::REQUEST_HEADER_LEN];
    let pool = Arc::new(PayloadPool::default());
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        // Fast paths first: a free slot and a header already buffered need
        // no waiting, so no cancellation bookkeeping either.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("semaphore is never closed"),
                _ = stop.cancelled() => return Ok(()),
            },
        };
        if let Some(buffered) = reader.buffer().get(..p::REQUEST_HEADER_LEN) {
            hdr.copy_from_slice(buffered);
            Pin::new(&mut *reader).consume(p::REQUEST_HEADER_LEN);
        } else {
            tokio::select! {
                r = reader.read_exact(&mut hdr) => match r {
                    Ok(_) => {}
                    // Hanging up without NBD_CMD_DISC is common (and harmless).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.into()),
                },
                _ = stop.cancelled() => return Ok(()),
            }
        }
        let h = RequestHeader::parse(&hdr).map_err(|m| NbdError::BadMagic { magic: m.0 })?;
        let cmd = match p::validate(&h, limits) {
            Ok(cmd) => cmd,
            Err(errno) => {
                if h.kind == p::CMD_WRITE {
                    skip_payload(reader, h.length).await?;
                }
                debug!(
                    cookie = h.cookie,
                    kind = h.kind,
                    errno,
                    "nbd request refused"
                );
                send(tx, h.cookie, errno, None, slot, None);
                continue;
            }
        };
        let budget = match cmd {
            Command::Read { len, .. } | Command::Write { len, .. } if len > 0 => {
                tokio::select! {
                    b = bytes.clone().acquire_many_owned(len) => {
                        Some(b.expect("semaphore is never closed"))
                    }
                    _ = stop.cancelled() => return Ok(()),
                }
            }
            _ => None,
        };
        let payload = match cmd {
            Command::Disconnect => return Ok(()),
            Command::Write { len, .. } => Some(read_payload(reader, len, pool.take(len)).await?),
            _ => None,
        };
        let dev = dev.clone();
        let tx = tx.clone();
        let pool = pool.clone();
        let cookie = h.cookie;
        tokio::spawn(async move {
            // Keep a handle on the payload: if the device did not keep its
            // copy, the buffer goes back to the pool for the next write.
            let keep = payload.clone();
            // A panicking device must still answer, or the client waits
            // forever for this cookie.
            let result = AssertUnwindSafe(run(dev.as_ref(), cmd, payload))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    error!(cookie, ?cmd, "nbd device panicked while serving a request");
                    Err(io::Error::other("device panicked"))
                });
            if let Some(buf) = keep.and_then(|b| b.try_into_mut().ok()) {
                pool.give(buf);
            }
            let (error, data) = match result {
                Ok(data) => (0, data),
                Err(e) => {
                    debug!(cookie, ?cmd, error = %e, "nbd request failed");
                    (p::errno_for(e.kind()), None)
                }
            };
            send(&tx, cookie, error, data, slot, budget);
        });
    }
}

fn send(
    tx: &mpsc::UnboundedSender<Reply>,
    cookie: u64,
    error: u32,
    data: Option<Bytes>,
    slot: OwnedSemaphorePermit,
    budget: Option<OwnedSemaphorePermit>,
) {
    // If the writer is gone the connection is closing; the reply is moot.
    let _ = tx.send(Reply {
        cookie,
        error,
        data,
        _slot: slot,
        _bytes: budget,
    });
}

/// Runs one validated command against the device.
async fn run(
    dev: &dyn BlockDevice,
    cmd: Command,
    payload: Option<Bytes>,
) -> io::Result<Option<Bytes>> {
    match cmd {
        Command::Read { len: 0, .. } => Ok(Some(Bytes::new())),
        Command::Read { offset, len } => {
            let data = dev.read(offset, len).await?;
            // A simple reply's length is implied by the request: sending any
            // other amount would desynchronise the stream.
            if data.len() != len as usize {
                return Err(io::Error::other(format!(
                    "device returned {} bytes for a read of {len}",
                    data.len()
                )));
            }
            Ok(Some(data))
        }
        Command::Write { len: 0, .. } => Ok(None),
        Command::Write { offset, fua, .. } => {
            dev.write(offset, payload.unwrap_or_default(), fua).await?;
            Ok(None)
        }
        Command::Flush => dev.flush().await.map(|_| None),
        Command::Trim { len: 0, .. } => Ok(None),
        Command::Trim { offset, len } => dev.trim(offset, len).await.map(|_| None),
        Command::WriteZeroes { len: 0, .. } => Ok(None),
        Command::WriteZeroes { offset, len, fua } => {
            dev.write_zeroes(offset, len, fua).await.map(|_| None)
        }
        Command::Disconnect => Ok(None),
    }
}

/// Write-payload buffers of one connection, kept for reuse: a fresh megabyte
/// per write costs page faults on every write.
#[derive(Default)]
struct PayloadPool(Mutex<Vec<BytesMut>>);

/// Buffers kept per connection, and the largest kept (at most 16 MiB idle).
const POOL_BUFFERS: usize = 16;
const POOL_MAX_BUF: usize = 1 << 20;

impl PayloadPool {
    fn take(&self, len: u32) -> BytesMut {
        let len = len as usize;
        let reused = if len <= POOL_MAX_BUF {
            self.0.lock().ok().and_then(|mut v| v.pop())
        } else {
            None
        };
        match reused {
            Some(mut b) => {
                b.clear();
                b.reserve(len);
                b
            }
            None => BytesMut::with_capacity(len),
        }
    }

    fn give(&self, buf: BytesMut) {
        if buf.capacity() > POOL_MAX_BUF {
            return;
        }
        if let Ok(mut v) = self.0.lock() {
            if v.len() < POOL_BUFFERS {
                v.push(buf);
            }
        }
    }
}

/// Reads a write payload into `buf` (empty, reused or fresh) without
/// zero-filling it first.
async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: u32,
    mut buf: BytesMut,
) -> io::Result<Bytes> {
    let len = len as usize;
    while buf.len() < len {
        let want = (len - buf.len()) as u64;
        if (&mut *reader).take(want).read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

/// Consumes the payload of a refused write so the stream stays in sync. Writes
/// beyond the size cap are not skipped: the client broke the advertised limit,
/// and reading gigabytes to throw away is not worth it, so the connection closes.
async fn skip_payload<R: AsyncRead + Unpin>(reader: &mut R, len: u32) -> Result<(), NbdError> {
    if len > p::MAX_REQUEST_LEN {
        return Err(NbdError::RequestTooLarge {
            length: len,
            limit: p::MAX_REQUEST_LEN,
        });
    }
    let n = tokio::io::copy(
        &mut (&mut *reader).take(u64::from(len)),
        &mut tokio::io::sink(),
    )
    .await?;
    if n != u64::from(len) {
        return Err(NbdError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// The single writer: batches whatever replies are ready into as few writes as
/// possible, then flushes.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    failed: CancellationToken,
) -> io::Result<()> {
    let result = async {
        let mut buf: Vec<u8> = Vec::with_capacity(COPY_LIMIT * 2);
        // Replies stay alive (holding their permits) until written.
        let mut written: Vec<Reply> = Vec::with_capacity(MAX_IN_FLIGHT as usize);
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(reply) = next {
                buf.extend_from_slice(&p::encode_simple_reply(reply.error, reply.cookie));
                match &reply.data {
                    Some(d) if d.len() > COPY_LIMIT => {
                        write_all_vectored(&mut w, &buf, d).await?;
                        buf.clear();
                    }
                    Some(d) => buf.extend_from_slice(d),
                    None => {}
                }
                written.push(reply);
                if buf.len() >= COPY_LIMIT {
                    w.write_all(&buf).await?;
                    buf.clear();
                    written.clear();
                }
                next = rx.try_recv().ok();
            }
            if !buf.is_empty() {
                w.write_all(&buf).await?;
                buf.clear();
            }
            w.flush().await?;
            written.clear();
        }
        w.shutdown().await
    }
    .await;
    if result.is_err() {
        failed.cancel();
    }
    result
}

/// Writes `head` then `data` with as few syscalls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &[u8],
    data: &[u8],
) -> io::Result<()> {
    let (mut h, mut d) = (head, data);
    while !h.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(h), IoSlice::new(d)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < h.len() {
            h = &h[n..];
        } else {
            d = &d[n - h.len()..];
            h = &[];
        }
    }
    w.write_all(d).await
}
