//! An eventfd used as a doorbell: rung from anywhere (another thread, or a
//! client process holding a copy), drained where it is waited on.

use rustix::event::EventfdFlags;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::io;

/// A non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub struct Doorbell(OwnedFd);

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        Ok(Doorbell(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?))
    }

    pub fn ring(&self) {
        // EAGAIN means the counter is saturated: it is rung already.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Resets the counter, so the next wait sleeps until the next ring.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut buf);
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_and_drains() {
        let bell = Doorbell::new().unwrap();
        let mut buf = [0u8; 8];
        assert!(
            rustix::io::read(bell.fd(), &mut buf).is_err(),
            "starts silent"
        );
        bell.ring();
        bell.ring();
        bell.drain();
        assert!(rustix::io::read(bell.fd(), &mut buf).is_err(), "drained");
    }
}
