//! The shared frame writer and per-session flow-control credit.

use std::io::{self, Write};
use std::sync::{Condvar, Mutex};

use wisp_proto::{encode, Control, Frame, Kind, INITIAL_WINDOW};

/// The write side of the channel. Every thread sends whole frames under one lock, so
/// frames never interleave.
pub struct Out {
    w: Mutex<Box<dyn Write + Send>>,
}

impl Out {
    pub fn new(w: Box<dyn Write + Send>) -> Out {
        Out { w: Mutex::new(w) }
    }

    pub fn send_raw(&self, kind: Kind, session: u32, payload: &[u8]) -> io::Result<()> {
        let bytes = encode(kind, session, payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut w = self.w.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&bytes)?;
        w.flush()
    }

    pub fn send(&self, f: &Frame) -> io::Result<()> {
        self.send_raw(f.kind, f.session, &f.payload)
    }

    pub fn control(&self, session: u32, msg: &Control) {
        let _ = self.send(&Frame::control(session, msg));
    }

    pub fn error(&self, session: u32, message: impl Into<String>) {
        self.control(
            session,
            &Control::Error {
                message: message.into(),
                errno: None,
            },
        );
    }

    /// An error from a system call: `context: error`, with the errno name.
    pub fn error_io(&self, session: u32, context: &str, error: &io::Error) {
        self.control(
            session,
            &Control::Error {
                message: format!("{context}: {error}"),
                errno: crate::fsops::errno_name(error).map(str::to_string),
            },
        );
    }

    pub fn window(&self, session: u32, bytes: u32) {
        let _ = self.send(&Frame::window(session, bytes));
    }
}

/// How many data bytes this side may still send on one session. Senders block in
/// [`Credit::take`] until the host grants more, which bounds what a slow host can make
/// the guest buffer (nothing beyond one chunk) and what we make the host buffer.
pub struct Credit {
    st: Mutex<(u64, bool)>,
    cv: Condvar,
}

impl Default for Credit {
    fn default() -> Self {
        Credit {
            st: Mutex::new((INITIAL_WINDOW as u64, false)),
            cv: Condvar::new(),
        }
    }
}

impl Credit {
    pub fn grant(&self, n: u32) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        // A hostile host could grant forever; saturate instead of overflowing.
        st.0 = st.0.saturating_add(n as u64);
        self.cv.notify_all();
    }

    /// Waits for credit and takes up to `max` bytes of it; `None` once closed (the host
    /// abandoned the session: the caller should drop its data).
    pub fn take(&self, max: usize) -> Option<usize> {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.1 {
                return None;
            }
            if st.0 > 0 {
                let n = (st.0.min(max as u64)) as usize;
                st.0 -= n as u64;
                return Some(n);
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Returns untaken credit (the read produced fewer bytes than taken).
    pub fn give_back(&self, n: usize) {
        self.grant(n.min(u32::MAX as usize) as u32);
    }

    pub fn close(&self) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        st.1 = true;
        self.cv.notify_all();
    }
}
