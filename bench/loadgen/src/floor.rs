//! The physical floor: loopback TCP and HTTP round trips, idle CPU, and a fio run's summary.

use std::io::Read;
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::cpu::cpu_totals;
use crate::die;
use crate::wire::{connect, one, small_rt, Op, Outcome, System};

pub fn cmd_rtt(seconds: f64) {
    let secs = seconds;
    // 1. TCP ping-pong of one byte between two threads (blocking sockets).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        }
    });
    let mut hist: Histogram<u64> = Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("hist");
    {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut b = [7u8; 1];
        while Instant::now() < end {
            let t = Instant::now();
            if c.write_all(&b).is_err() || c.read_exact(&mut b).is_err() {
                break;
            }
            let _ = hist.record(t.elapsed().as_nanos() as u64);
        }
    }
    let _ = server.join();
    let tcp = (
        hist.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
    );

    // 2. HTTP/1.1 round trip (the loadgen's own client, one keep-alive connection) against a
    //    trivial hyper server answering 200 "ok", each on its own thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        server_rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            let serve = async {
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            };
            tokio::select! { _ = serve => {}, _ = stop_rx => {} }
        });
    });
    let client_rt = small_rt();
    let http = client_rt.block_on(async {
        let mut h: Histogram<u64> = Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("hist");
        let mut s = Some(connect(&addr).await.expect("connect"));
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            let req = Request::builder()
                .uri("/")
                .header(hyper::header::HOST, &addr)
                .body(Full::new(Bytes::new()))
                .expect("req");
            let t = Instant::now();
            match one(
                &mut s,
                &addr,
                req,
                Op::Write,
                System::Raftkv,
                Duration::from_secs(5),
            )
            .await
            {
                Outcome::Ok => {
                    let _ = h.record(t.elapsed().as_nanos() as u64);
                }
                _ => break,
            }
        }
        (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    println!(
        "tcp_rtt_count={}\ntcp_rtt_p50_us={:.1}\ntcp_rtt_p99_us={:.1}",
        tcp.0,
        tcp.1 as f64 / 1000.0,
        tcp.2 as f64 / 1000.0
    );
    println!(
        "http_rtt_count={}\nhttp_rtt_p50_us={:.1}\nhttp_rtt_p99_us={:.1}",
        http.0,
        http.1 as f64 / 1000.0,
        http.2 as f64 / 1000.0
    );
}

pub fn cmd_idle(ms: u64) {
    let (t0, i0) = cpu_totals();
    std::thread::sleep(Duration::from_millis(ms));
    let (t1, i1) = cpu_totals();
    let idle = 100.0 * (i1 - i0) as f64 / (t1 - t0).max(1) as f64;
    println!("{idle:.1}");
}

pub fn cmd_fio(path: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    // fio may print warnings before the JSON object
    let text = &text[text.find('{').unwrap_or(0)..];
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    let job = &v["jobs"][0];
    let iops = job["write"]["iops"].as_f64().unwrap_or(0.0);
    let pct =
        |sect: &serde_json::Value, p: &str| sect["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let sync = &job["sync"]["lat_ns"];
    let wr = &job["write"]["clat_ns"];
    println!("fio_iops={iops:.0}");
    println!(
        "fio_sync_p50_us={:.0}\nfio_sync_p99_us={:.0}",
        pct(sync, "50.000000"),
        pct(sync, "99.000000")
    );
    println!(
        "fio_write_p50_us={:.0}\nfio_write_p99_us={:.0}",
        pct(wr, "50.000000"),
        pct(wr, "99.000000")
    );
    // whole append+fdatasync cycle: 1/iops on one sync job
    if iops > 0.0 {
        println!("fio_cycle_us={:.0}", 1e6 / iops);
    }
}
