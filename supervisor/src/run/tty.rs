//! An interactive agent gets a pty of its own, which Lanyard relays to and
//! from its own terminal: the agent never holds a descriptor of the terminal
//! Lanyard was started from, so `TIOCSTI` (pushing input into it, to be run
//! by the root shell after Lanyard exits) has nothing to aim at. The host
//! terminal is put in raw mode while the agent runs (keys, ^C included, reach
//! the agent's line discipline) and restored when this value is dropped.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

use rustix::termios::{OptionalActions, Termios};

/// The pty and the saved state of Lanyard's terminal.
pub struct Pty {
    master: std::fs::File,
    slave: Option<OwnedFd>,
    saved: Termios,
    drained: Option<mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Pty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pty").finish_non_exhaustive()
    }
}

impl Pty {
    /// A pty when stdin is a terminal and Lanyard is in its foreground
    /// (a background Lanyard touching the terminal would be stopped by it).
    pub fn open_if_interactive() -> Result<Option<Self>, String> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(&stdin) {
            return Ok(None);
        }
        match rustix::termios::tcgetpgrp(&stdin) {
            Ok(fg) if fg == rustix::process::getpgrp() => {}
            _ => return Ok(None),
        }
        let e = |what: &'static str| move |err: rustix::io::Errno| format!("pty: {what}: {err}");
        use rustix::fs::{Mode, OFlags};
        let master = rustix::pty::openpt(
            rustix::pty::OpenptFlags::RDWR
                | rustix::pty::OpenptFlags::NOCTTY
                | rustix::pty::OpenptFlags::CLOEXEC,
        )
        .map_err(e("open"))?;
        rustix::pty::grantpt(&master).map_err(e("grant"))?;
        rustix::pty::unlockpt(&master).map_err(e("unlock"))?;
        let name = rustix::pty::ptsname(&master, Vec::new()).map_err(e("name"))?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(e("open the slave"))?;
        let saved = rustix::termios::tcgetattr(&stdin).map_err(e("read terminal settings"))?;
        // The agent's terminal starts out like the user's.
        rustix::termios::tcsetattr(&slave, OptionalActions::Now, &saved)
            .map_err(e("copy terminal settings"))?;
        if let Ok(size) = rustix::termios::tcgetwinsize(&stdin) {
            let _ = rustix::termios::tcsetwinsize(&slave, size);
        }
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, OptionalActions::Now, &raw).map_err(e("raw mode"))?;
        Ok(Some(Self {
            master: std::fs::File::from(master),
            slave: Some(slave),
            saved,
            drained: None,
        }))
    }

    /// The agent's end, for its stdin, stdout and stderr. Taken once: the
    /// relay sees end of file only after every copy of it is closed.
    pub fn take_slave(&mut self) -> Option<OwnedFd> {
        self.slave.take()
    }

    /// Starts copying stdin to the pty and the pty to stdout.
    pub fn relay(&mut self) -> Result<(), String> {
        let mut to_pty = self.master.try_clone().map_err(|e| format!("pty: {e}"))?;
        let mut from_pty = self.master.try_clone().map_err(|e| format!("pty: {e}"))?;
        std::thread::Builder::new()
            .name("lanyard-pty-in".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_pty);
            })
            .map_err(|e| format!("pty relay: {e}"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("lanyard-pty-out".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                let mut out = std::io::stdout();
                // EIO once the last slave descriptor is closed: the sandbox is gone.
                while let Ok(n @ 1..) = from_pty.read(&mut buf) {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
                let _ = tx.send(());
            })
            .map_err(|e| format!("pty relay: {e}"))?;
        self.drained = Some(rx);
        Ok(())
    }

    /// Passes Lanyard's window size on (SIGWINCH).
    pub fn resize(&self) {
        if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdin()) {
            let _ = rustix::termios::tcsetwinsize(&self.master, size);
        }
    }

    /// Waits, boundedly, for the agent's last output to be copied out.
    pub fn drain(&mut self, within: Duration) {
        if let Some(rx) = self.drained.take() {
            let _ = rx.recv_timeout(within);
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
