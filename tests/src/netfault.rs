//! A userspace UDP fault proxy (the kernel here has no netem): it stands between an agent and
//! the hub and drops, delays (so reorders), duplicates, or cuts datagrams, in both directions,
//! as a test tells it to, and counts what it did.
//!
//! Each client address gets its own upstream socket, as a NAT would, so the hub sees one flow
//! per agent connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

/// What the proxy does to each datagram, in both directions.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Chance of dropping a datagram.
    pub drop: f64,
    /// Chance of sending a datagram twice.
    pub duplicate: f64,
    /// Each datagram waits a random delay up to this: datagrams overtake each other.
    pub delay_max: Duration,
    /// Drops everything while set (the link is cut).
    pub cut: bool,
}

/// What the proxy did so far.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub cut: AtomicU64,
}

#[derive(Debug)]
pub struct UdpProxy {
    /// Where clients send (instead of the upstream address).
    pub addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `data` to `to` on `socket` under `faults`, counting in `counts`.
fn pass(socket: &Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr, faults: &Faults, counts: &Counts, rng: &mut SmallRng) {
    if faults.cut {
        counts.cut.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if rng.random_bool(faults.drop.clamp(0.0, 1.0)) {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let copies = if rng.random_bool(faults.duplicate.clamp(0.0, 1.0)) {
        counts.duplicated.fetch_add(1, Ordering::Relaxed);
        2
    } else {
        1
    };
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let delay = if faults.delay_max.is_zero() { Duration::ZERO } else { faults.delay_max.mul_f64(rng.random::<f64>()) };
    let socket = socket.clone();
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await; // the fault under test: this datagram is late
        }
        for _ in 0..copies {
            let _ = socket.send_to(&data, to).await;
        }
    });
}

impl UdpProxy {
    /// Listens on a free loopback port and forwards to `upstream` under `faults`.
    pub async fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("proxy socket"));
        let addr = front.local_addr().expect("proxy address");
        let faults = Arc::new(Mutex::new(faults));
        let counts = Arc::new(Counts::default());
        let (f, c) = (faults.clone(), counts.clone());
        let task = tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else { return };
                let back = match flows.get(&client) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("flow socket"));
                        flows.insert(client, s.clone());
                        // Replies from upstream go back to this client, under the same faults.
                        let (front, s2, f, c) = (front.clone(), s.clone(), f.clone(), c.clone());
                        let mut rng = SmallRng::seed_from_u64(rng.random());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = s2.recv(&mut buf).await {
                                let faults = f.lock().expect("faults").clone();
                                pass(&front, buf[..n].to_vec(), client, &faults, &c, &mut rng);
                            }
                        });
                        s.connect(upstream).await.expect("connect upstream");
                        s
                    }
                };
                let faults = f.lock().expect("faults").clone();
                pass(&back, buf[..n].to_vec(), upstream, &faults, &c, &mut rng);
            }
        });
        Self { addr, faults, counts, task }
    }

    /// Changes the faults from the next datagram on.
    pub fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().expect("faults"));
    }
}

/// A userspace TCP proxy that can partition its clients from the server (here: one hub
/// replica from PostgreSQL). While cut, nothing crosses in either direction on any
/// connection, open or new, and nothing is closed either: a partition, not a refusal, so the
/// client finds out only by its own timeouts. Healing lets everything flow again.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut pairs = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let cut = cut_rx.clone();
                pairs.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::join!(relay(&mut cr, &mut sw, cut.clone()), relay(&mut sr, &mut cw, cut));
                });
                while pairs.try_join_next().is_some() {}
            }
        });
        Self { addr, cut, task }
    }

    /// Partitions (`true`) or heals (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies `from` to `to` while the link is up; while cut, holds whatever arrives.
async fn relay(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Not even read while cut: the sender's buffers fill, as on a dead path.
        let up = cut.wait_for(|c| !*c).await.is_ok();
        if !up {
            return;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => { let _ = to.shutdown().await; return } Ok(n) => n },
            _ = async { let _ = cut.wait_for(|c| *c).await; } => continue,
        };
        let up = cut.wait_for(|c| !*c).await.is_ok();
        if !up || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
