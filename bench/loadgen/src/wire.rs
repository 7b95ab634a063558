//! The HTTP/1.1 side of the generator: what each system's request looks like (the seed API for
//! raftkv, etcd's JSON gateway for etcd), one request on a kept-alive connection with its
//! outcome, and small helpers (keys, values, a PRNG, one-off requests).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::die;
use crate::AnyErr;

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum System {
    Raftkv,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Write,
    LinRead,
    StaleRead,
    /// A compare-and-swap txn (gRPC only, see grpc.rs).
    Cas,
    /// Lease grant + put with the lease + revoke (gRPC only, scenario l1, see watch.rs).
    Lease,
}

/// 16-byte key: `k` + 15 digits.
pub fn key_name(i: u64) -> String {
    format!("k{i:015}")
}

pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub struct Wire {
    pub system: System,
    pub host: String,
    pub value: Bytes,
    pub value_b64: String,
}

impl Wire {
    pub fn request(&self, op: Op, key: &str) -> Request<Full<Bytes>> {
        let b = Request::builder().header(hyper::header::HOST, &self.host);
        match (self.system, op) {
            (System::Raftkv, Op::Write) => b
                .method("PUT")
                .uri(format!("/db/{key}"))
                .body(Full::new(self.value.clone())),
            (System::Raftkv, Op::LinRead) => b
                .method("GET")
                .uri(format!("/db/{key}"))
                .body(Full::new(Bytes::new())),
            (System::Raftkv, Op::StaleRead) => b
                .method("GET")
                .uri(format!("/db/{key}?level=stale"))
                .body(Full::new(Bytes::new())),
            (System::Etcd, Op::Write) => b
                .method("POST")
                .uri("/v3/kv/put")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    b64(key.as_bytes()),
                    self.value_b64
                )))),
            (System::Etcd, Op::LinRead) => b
                .method("POST")
                .uri("/v3/kv/range")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"key\":\"{}\"}}",
                    b64(key.as_bytes())
                )))),
            (_, Op::Cas | Op::Lease) => die("--op cas/lease needs --api grpc"),
            (System::Etcd, Op::StaleRead) => b
                .method("POST")
                .uri("/v3/kv/range")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"key\":\"{}\",\"serializable\":true}}",
                    b64(key.as_bytes())
                )))),
        }
        .expect("valid request")
    }
}

#[derive(Debug)]
pub enum Outcome {
    Ok,
    Status(u16),
    Miss,
    Timeout,
    Io,
}

pub async fn connect(addr: &str) -> Result<Sender, AnyErr> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request on the connection; `None` in `sender` afterwards means it must be reopened.
pub async fn one(
    sender: &mut Option<Sender>,
    addr: &str,
    req: Request<Full<Bytes>>,
    op: Op,
    system: System,
    timeout: Duration,
) -> Outcome {
    if sender.is_none() {
        match tokio::time::timeout(timeout, connect(addr)).await {
            Ok(Ok(s)) => *sender = Some(s),
            _ => return Outcome::Io,
        }
    }
    let Some(s) = sender.as_mut() else {
        return Outcome::Io;
    };
    let fut = async {
        s.ready().await?;
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, AnyErr>((status, body))
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            *sender = None;
            Outcome::Timeout
        }
        Ok(Err(_)) => {
            *sender = None;
            Outcome::Io
        }
        Ok(Ok((status, body))) => {
            if !(200..300).contains(&status) {
                Outcome::Status(status)
            } else if system == System::Etcd && op != Op::Write && !contains(&body, b"\"kvs\"") {
                Outcome::Miss
            } else {
                Outcome::Ok
            }
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn outcome_name(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "ok".into(),
        Outcome::Status(s) => format!("http{s}"),
        Outcome::Miss => "miss".into(),
        Outcome::Timeout => "timeout".into(),
        Outcome::Io => "io".into(),
    }
}

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1): the top 53 bits, as many as an f64 holds exactly.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn value_bytes(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}

pub async fn simple(
    addr: &str,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, Bytes), AnyErr> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), connect(addr)).await??;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let fut = async {
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, AnyErr>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await?
}

pub fn small_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
