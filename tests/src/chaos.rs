//! A chaos proxy on loopback: TCP between the gateway and a real FHIR server, misbehaving the
//! way networks and middleboxes do. Each connection, by a seeded draw, passes cleanly, is
//! reset before the request reaches the server, has its response cut off part-way (after
//! the server acted on the request), has its response held back longer than the gateway
//! waits, or is merely slow; and while chaos is on, no connection lives longer than a
//! second or so (dropped wherever it is), so a client that keeps connections alive meets a
//! new draw every few requests. Turned off, it passes everything.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// What the proxy did, connection by connection.
#[derive(Debug, Default)]
pub struct ChaosCounts {
    pub connections: AtomicU64,
    pub passed: AtomicU64,
    pub reset: AtomicU64,
    pub cut: AtomicU64,
    pub frozen: AtomicU64,
    pub slow: AtomicU64,
}

impl std::fmt::Display for ChaosCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        write!(
            f,
            "{} connections: {} passed, {} reset before the request, {} responses cut, {} frozen, {} slow",
            g(&self.connections),
            g(&self.passed),
            g(&self.reset),
            g(&self.cut),
            g(&self.frozen),
            g(&self.slow)
        )
    }
}

#[derive(Debug)]
pub struct ChaosProxy {
    pub port: u16,
    pub counts: Arc<ChaosCounts>,
    on: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
enum Fate {
    Pass,
    Reset,
    Cut,
    Freeze,
    Slow,
}

impl ChaosProxy {
    /// Proxies to `upstream` (host:port) with chaos on, drawing fates from `seed`.
    pub fn start(upstream: &str, seed: u64, freeze: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind chaos proxy");
        let port = listener.local_addr().expect("addr").port();
        let counts = Arc::new(ChaosCounts::default());
        let on = Arc::new(AtomicBool::new(true));
        let upstream = upstream.to_owned();
        {
            let (counts, on) = (counts.clone(), on.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    let fate = if on.load(Ordering::Relaxed) {
                        match rng.random_range(0..100) {
                            0..45 => Fate::Pass,
                            45..60 => Fate::Reset,
                            60..80 => Fate::Cut,
                            80..88 => Fate::Freeze,
                            _ => Fate::Slow,
                        }
                    } else {
                        Fate::Pass
                    };
                    let cut_at = rng.random_range(1..400);
                    if on.load(Ordering::Relaxed) {
                        let lifetime = Duration::from_millis(rng.random_range(200..1500));
                        if let Ok(c) = client.try_clone() {
                            std::thread::spawn(move || {
                                std::thread::sleep(lifetime);
                                let _ = c.shutdown(Shutdown::Both);
                            });
                        }
                    }
                    let (upstream, counts) = (upstream.clone(), counts.clone());
                    std::thread::spawn(move || {
                        serve(client, &upstream, fate, cut_at, freeze, &counts);
                    });
                }
            });
        }
        Self { port, counts, on }
    }

    /// Chaos on or off (off: every new connection passes).
    pub fn set_chaos(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }
}

fn serve(
    client: TcpStream,
    upstream: &str,
    fate: Fate,
    cut_at: usize,
    freeze: Duration,
    counts: &ChaosCounts,
) {
    let bump = |a: &AtomicU64| {
        a.fetch_add(1, Ordering::Relaxed);
    };
    if let Fate::Reset = fate {
        bump(&counts.reset);
        // SO_LINGER 0 would send an RST; a plain close is what most resets look like here.
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Requests flow untouched.
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = [0u8; 8192];
    let mut sent = 0usize;
    let mut first = true;
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if first {
            first = false;
            match fate {
                Fate::Freeze => {
                    bump(&counts.frozen);
                    std::thread::sleep(freeze);
                    break;
                }
                Fate::Slow => {
                    bump(&counts.slow);
                    std::thread::sleep(Duration::from_millis(300));
                }
                Fate::Cut => bump(&counts.cut),
                Fate::Pass => bump(&counts.passed),
                Fate::Reset => {}
            }
        }
        if let Fate::Cut = fate
            && sent + n >= cut_at
        {
            let _ = c_write.write_all(&buf[..cut_at.saturating_sub(sent)]);
            break;
        }
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = s_read.shutdown(Shutdown::Both);
    let _ = up.join();
}
