use super::conn::server_name;
use super::*;

#[test]
fn server_names_come_from_the_host_part() {
    assert!(matches!(
        server_name("127.0.0.1:4001"),
        Ok(rustls::pki_types::ServerName::IpAddress(_))
    ));
    assert!(matches!(
        server_name("[::1]:4001"),
        Ok(rustls::pki_types::ServerName::IpAddress(_))
    ));
    assert!(matches!(
        server_name("node1.example:4001"),
        Ok(rustls::pki_types::ServerName::DnsName(_))
    ));
}

#[tokio::test]
async fn a_frame_cut_short_closes_its_connection_and_the_next_request_opens_another() {
    use tokio::io::AsyncReadExt;
    let (addr, mut accepted) = testing::silent_peer().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = testing::link_to(dir.path(), &addr);
    // Far more than the socket buffers hold: the write stalls midway and times out.
    let body = vec![7u8; 32 << 20];
    let err = link
        .call_raw(Rpc::Append, &body, Duration::from_millis(300))
        .await
        .expect_err("the peer reads nothing");
    assert!(matches!(err, LinkError::Lost { .. }), "{err}");
    let mut first = accepted.recv().await.expect("the first connection");

    // The next request goes on a new connection ...
    let err = link
        .call_raw(Rpc::Vote, b"x", Duration::from_millis(300))
        .await
        .expect_err("the peer answers nothing");
    assert!(matches!(err, LinkError::Lost { .. }), "{err}");
    let mut second = tokio::time::timeout(Duration::from_secs(5), accepted.recv())
        .await
        .expect("the next request opened a second connection")
        .expect("a second connection");

    // ... and the first one ends after part of the frame: nothing followed the cut.
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut received))
        .await
        .expect("the first connection is closed")
        .expect("read");
    let whole = wire::LEN_BYTES + wire::HEAD_BYTES + body.len();
    assert!(
        received.len() < whole,
        "{} of {whole} bytes",
        received.len()
    );
    // The second connection carries the new request whole, as the first frame on it.
    let frame = read_frame(&mut second, wire::FRAME_BYTES_MAX)
        .await
        .expect("a frame");
    let (_, rpc, request) = wire::split(&frame).expect("split");
    assert_eq!((rpc, request), (Rpc::Vote as u8, &b"x"[..]));
}

#[test]
fn only_failures_before_handling_count_as_not_handled() {
    let addr = "a:1".to_string();
    assert!(
        LinkError::Unreachable {
            addr: addr.clone(),
            why: String::new()
        }
        .not_handled()
    );
    assert!(
        LinkError::Refused {
            addr: addr.clone(),
            status: 421,
            text: String::new()
        }
        .not_handled()
    );
    assert!(
        !LinkError::Lost {
            addr: addr.clone(),
            why: String::new()
        }
        .not_handled()
    );
    assert!(
        !LinkError::Remote {
            addr,
            text: String::new()
        }
        .not_handled()
    );
}
