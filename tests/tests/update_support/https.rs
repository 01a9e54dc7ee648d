//! An HTTPS artifact server on loopback for the update tests: a real TLS listener (rustls,
//! with a certificate made by rcgen for 127.0.0.1) speaking enough HTTP/1.1 to serve files
//! with `Range` support, plus faults a real network or a broken mirror produces.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;

/// What the server does wrong when serving a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Announces the full length but closes the connection after this many bytes, on the
    /// first request only (a dropped connection mid-transfer).
    DropOnceAfter(usize),
    /// Sends this many bytes on the first request, then stalls with the connection open (the
    /// client is killed meanwhile).
    StallOnceAfter(usize),
    /// Serves only the first this-many bytes, as if the file on the mirror were truncated.
    Truncate(usize),
    /// Serves other bytes of the same length.
    WrongBytes,
}

#[derive(Debug, Clone)]
struct Entry {
    body: Arc<Vec<u8>>,
    fault: Fault,
    served: usize,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Debug)]
pub struct Server {
    pub port: u16,
    /// PEM of the server's self-signed certificate: the CA bundle the agent is given.
    pub ca_pem: String,
    files: Arc<Mutex<HashMap<String, Entry>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    pub fn start() -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed certificate");
        let ca_pem = cert.cert.pem();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let files: Arc<Mutex<HashMap<String, Entry>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        {
            let files = files.clone();
            let seen = seen.clone();
            rt.spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let files = files.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = serve(tls, files, seen).await;
                        }
                    });
                }
            });
        }
        Self {
            port,
            ca_pem,
            files,
            seen,
            _rt: rt,
        }
    }

    /// Publishes `body` at `/name` and returns its URL.
    pub fn put(&self, name: &str, body: Vec<u8>, fault: Fault) -> String {
        self.files.lock().expect("lock").insert(
            format!("/{name}"),
            Entry {
                body: Arc::new(body),
                fault,
                served: 0,
            },
        );
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    pub fn put_file(&self, name: &str, path: &Path, fault: Fault) -> String {
        self.put(name, std::fs::read(path).expect("read artifact"), fault)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn write_ca(&self, dir: &Path) -> std::path::PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.ca_pem).expect("write CA");
        p
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    files: Arc<Mutex<HashMap<String, Entry>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_owned());
    seen.lock().expect("lock").push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let entry = {
        let mut files = files.lock().expect("lock");
        files.get_mut(&path).map(|e| {
            e.served += 1;
            e.clone()
        })
    };
    let Some(entry) = entry else {
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return s.shutdown().await;
    };
    let mut body: Vec<u8> = match entry.fault {
        Fault::Truncate(n) => entry.body[..n.min(entry.body.len())].to_vec(),
        Fault::WrongBytes => entry.body.iter().map(|b| b ^ 0x5a).collect(),
        _ => entry.body.to_vec(),
    };
    let total = body.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let header = match start {
        Some(st) if st >= total => {
            s.write_all(
                format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            return s.shutdown().await;
        }
        Some(st) => {
            body.drain(..st);
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {st}-{}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                total - 1,
                body.len()
            )
        }
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
        ),
    };
    s.write_all(header.as_bytes()).await?;
    match entry.fault {
        Fault::DropOnceAfter(n) if entry.served == 1 => {
            s.write_all(&body[..n.min(body.len())]).await?;
            s.flush().await?;
            // Drop the connection without a TLS close_notify, as a cut cable would.
            Ok(())
        }
        Fault::StallOnceAfter(n) if entry.served == 1 => {
            s.write_all(&body[..n.min(body.len())]).await?;
            s.flush().await?;
            tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            Ok(())
        }
        _ => {
            s.write_all(&body).await?;
            s.shutdown().await
        }
    }
}
