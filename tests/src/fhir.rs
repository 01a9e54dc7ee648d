//! The real FHIR R4 server for end-to-end tests: `tests/fhir-server/server.mjs` (Medplum's
//! router over its in-memory repository, validating, with fault-injection hooks) started on a
//! free loopback port, and a small client to look at what it holds.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The server's source folder.
pub fn server_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fhir-server")
}

/// Installs the server's npm packages if needed (idempotent; the test command's setup
/// normally did it already).
fn ensure_installed() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("fhir-server-install");
    let status = Command::new(script)
        .status()
        .expect("run scripts/fhir-server-install");
    assert!(status.success(), "scripts/fhir-server-install failed");
}

/// A running server; killed when dropped.
#[derive(Debug)]
pub struct FhirServer {
    child: Child,
    /// `http(s)://127.0.0.1:<port>`
    pub root: String,
    /// `<root>/fhir/R4`
    pub base_url: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl FhirServer {
    pub fn start() -> Self {
        Self::start_with(&[], None)
    }

    /// Starts with extra environment (TLS_CERT, AUTH_JWKS_URL, ...); `client` is the HTTP
    /// client the test uses to look at it (one trusting its CA, with a client certificate
    /// for mTLS).
    pub fn start_with(env: &[(&str, &str)], client: Option<reqwest::Client>) -> Self {
        ensure_installed();
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(server_dir())
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let tls = env.iter().any(|(k, _)| *k == "TLS_CERT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start node (Node.js 20+ is required)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("the FHIR server exited before listening")
                .expect("read server stdout");
            if let Some(p) = line.strip_prefix("LISTENING ") {
                break p.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let scheme = if tls { "https" } else { "http" };
        let root = format!("{scheme}://127.0.0.1:{port}");
        Self {
            child,
            base_url: format!("{root}/fhir/R4"),
            root,
            client: client.unwrap_or_else(|| {
                let mut o = vitalgate_core::http::ClientOptions::new(
                    "vitalgate-e2e",
                    std::time::Duration::from_secs(10),
                );
                o.https_only = false;
                o.pool = Some((0, std::time::Duration::from_secs(1)));
                vitalgate_core::http::client(o).expect("client")
            }),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn request(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut r = self.client.request(method, url);
            if let Some(b) = body {
                r = r
                    .header("content-type", "application/fhir+json")
                    .body(serde_json::to_vec(b).expect("json"));
            }
            let resp = r.send().await.expect("request to the test FHIR server");
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.root)
        } else {
            format!("{}/{path}", self.base_url)
        };
        self.request(reqwest::Method::POST, &url, Some(body))
    }

    /// POSTs an `application/x-www-form-urlencoded` body to a path under the root (the
    /// token endpoint).
    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("{}{path}", self.root);
        self.rt.block_on(async {
            let resp = self
                .client
                .post(&url)
                .form(form)
                .send()
                .await
                .expect("request to the test FHIR server");
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    /// POSTs the whole Bundle to the base URL.
    pub fn transaction(&self, bundle: &Value) -> (u16, Value) {
        let url = self.base_url.clone();
        self.request(reqwest::Method::POST, &url, Some(bundle))
    }

    pub fn get(&self, path_and_query: &str) -> Value {
        let url = format!("{}/{path_and_query}", self.base_url);
        let (status, v) = self.request(reqwest::Method::GET, &url, None);
        assert_eq!(status, 200, "GET {url}: {v}");
        v
    }

    /// `POST /__fault`, e.g. `{"status":429,"retryAfter":2,"count":1}` or `{"down":true}`.
    pub fn fault(&self, spec: Value) {
        let (s, v) = self.post("/__fault", &spec);
        assert_eq!(s, 200, "{v}");
    }

    /// Makes the server refuse any resource with this identifier value (400).
    pub fn reject_identifier(&self, value: &str) {
        let (s, v) = self.post("/__reject", &serde_json::json!({ "identifier": value }));
        assert_eq!(s, 200, "{v}");
    }

    pub fn stats(&self) -> Value {
        let url = format!("{}/__stats", self.root);
        self.request(reqwest::Method::GET, &url, None).1
    }

    /// Observations by first code and the number of identifiers held more than once.
    pub fn summary(&self) -> Value {
        let url = format!("{}/__summary", self.root);
        self.request(reqwest::Method::GET, &url, None).1
    }

    /// Observations with this first (MDC) code.
    pub fn observations_with_code(&self, code: &str) -> u64 {
        self.summary()["byCode"][code].as_u64().unwrap_or(0)
    }

    /// Identifiers (of any resource type) held by more than one resource.
    pub fn duplicate_identifiers(&self) -> u64 {
        self.summary()["duplicateIdentifiers"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }

    /// How many resources of a type the server holds.
    pub fn count(&self, ty: &str) -> u64 {
        self.stats()["counts"][ty].as_u64().unwrap_or(0)
    }

    /// Every resource of a type (all pages).
    pub fn all(&self, ty: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut url = format!("{}/{ty}?_count=1000", self.base_url);
        loop {
            let (s, page) = self.request(reqwest::Method::GET, &url, None);
            assert_eq!(s, 200, "{page}");
            for e in page["entry"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                out.push(e["resource"].clone());
            }
            let next = page["link"]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
                .and_then(|l| l["url"].as_str())
                .map(str::to_owned);
            match next {
                Some(n) if n != url => url = n,
                _ => return out,
            }
        }
    }

    /// Resources of `ty` whose identifier is `system|value` (a real search).
    pub fn by_identifier(&self, ty: &str, system: &str, value: &str) -> Vec<Value> {
        let v = self.get(&format!(
            "{ty}?identifier={}|{}",
            encode(system),
            encode(value)
        ));
        v["entry"]
            .as_array()
            .map(|a| a.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default()
    }

    /// Waits until `f` holds, or panics after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Observation identifiers that occur more than once on the server.
pub fn duplicate_identifiers(observations: &[Value]) -> Vec<String> {
    let mut seen = std::collections::HashMap::<String, u32>::new();
    for o in observations {
        let key = format!(
            "{}|{}",
            o["identifier"][0]["system"].as_str().unwrap_or(""),
            o["identifier"][0]["value"].as_str().unwrap_or("")
        );
        *seen.entry(key).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}
