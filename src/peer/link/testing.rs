//! A stand-in peer and a link to it, for the tests of the link and of what uses it.

use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use super::Dialer;
use super::Identity;
use super::Lane;
use super::Link;
use super::Links;
use super::read_frame;
use super::wire;

/// A peer that accepts links and answers every hello, then reads nothing; each accepted
/// connection is handed to the test.
pub async fn silent_peer() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<tokio::net::TcpStream>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (accepted, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut magic = vec![0u8; wire::MAGIC.len()];
            tcp.read_exact(&mut magic).await.expect("magic");
            read_frame(&mut tcp, wire::HELLO_BYTES_MAX)
                .await
                .expect("hello");
            let ok = postcard::to_stdvec(&Ok::<(), wire::HelloRefusal>(())).expect("encode");
            tcp.write_all(&wire::plain_frame(&ok))
                .await
                .expect("answer");
            if accepted.send(tcp).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Node 1's replication link to node 2 at `addr` (identity kept in `dir`).
pub fn link_to(dir: &Path, addr: &str) -> Arc<Link> {
    let identity = Identity::open(dir, 1, "n1".into()).expect("identity");
    let dialer = Dialer {
        source_ip: None,
        identity: Arc::new(identity),
        tls: None,
        features: Arc::default(),
    };
    Links::new(dialer, Arc::default()).get(2, addr, Lane::Replication)
}
