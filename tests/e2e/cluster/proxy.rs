//! A TCP forwarder between one replica and PostgreSQL, to cut that replica
//! off while the others keep their connections (design.md guarantee 6).
//!
//! Three modes, switched at any time:
//! - `pass`: every connection is forwarded both ways;
//! - `reset`: every live connection is closed at once and new ones are
//!   closed as soon as they are accepted (the database "went away");
//! - `blackhole`: connections stay open but nothing is forwarded, in
//!   either direction, and new ones are accepted and then left hanging (a
//!   network that drops packets). Restoring forwards what was held back,
//!   as TCP retransmission would once a real network heals.
//!
//! Why a user-space forwarder and not iptables: tests run unprivileged.
//! One difference matters and a test reports it: here the proxy's kernel
//! acknowledges every segment, so TCP keepalives and the TCP user timeout
//! never fire on a blackholed connection; only the daemon's own timeouts
//! can notice.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Reset,
    Blackhole,
}

/// The switch: the mode, and a generation bumped by every reset so a
/// connection that missed a short reset still ends.
#[derive(Debug, Clone, Copy)]
struct Switch {
    mode: Mode,
    generation: u64,
}

/// Listens on a loopback port and forwards to `upstream`; stops on drop.
pub struct Proxy {
    addr: SocketAddr,
    switch: watch::Sender<Switch>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (switch, rx) = watch::channel(Switch {
            mode: Mode::Pass,
            generation: 0,
        });
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(connection(client, upstream, rx.clone()));
            }
        });
        Proxy {
            addr,
            switch,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.switch.send_modify(|s| {
            if mode == Mode::Reset {
                s.generation += 1;
            }
            s.mode = mode;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set(Mode::Reset);
        self.accept.abort();
    }
}

/// Waits while blackholed; `false` once this connection must end (a
/// reset since `generation`, or the proxy is gone).
async fn may_pass(rx: &mut watch::Receiver<Switch>, generation: u64) -> bool {
    loop {
        let s = *rx.borrow_and_update();
        if s.generation != generation || s.mode == Mode::Reset {
            return false;
        }
        if s.mode == Mode::Pass {
            return true;
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<Switch>) {
    let generation = rx.borrow().generation;
    // A new connection while blackholed hangs (accepted, never answered).
    if !may_pass(&mut rx, generation).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Whichever direction ends first ends both: dropping the halves closes
    // the sockets.
    tokio::select! {
        _ = pump(cr, sw, rx.clone(), generation) => {}
        _ = pump(sr, cw, rx, generation) => {}
    }
}

/// Copies `from` -> `to` while the switch allows it.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rx: watch::Receiver<Switch>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !may_pass(&mut rx, generation).await {
            return;
        }
        tokio::select! {
            r = from.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Read before a blackhole began: held until it ends.
                if !may_pass(&mut rx, generation).await {
                    return;
                }
                tokio::select! {
                    w = to.write_all(&buf[..n]) => if w.is_err() { return },
                    _ = ended(&mut rx, generation) => return,
                }
            }
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Resolves once a reset happened since `generation` (or the proxy is gone).
async fn ended(rx: &mut watch::Receiver<Switch>, generation: u64) {
    loop {
        let s = *rx.borrow_and_update();
        if s.generation != generation || s.mode == Mode::Reset {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
