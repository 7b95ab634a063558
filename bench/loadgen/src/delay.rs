//! `loadgen delay-proxy`: a TCP proxy on 127.0.0.1 that delivers every byte `delay_ms` after it
//! arrived, in order, in both directions — links with a round trip of 2 × `delay_ms` between
//! raftkv nodes (bench/wan.sh), without touching the network configuration. Runs until killed.
//!
//! Plain threads (two per direction of each connection; peer links are few): a thread's sleep
//! is precise to tens of µs, where tokio's timer rounds up to whole milliseconds.
//! Limits: a chunk is at most 64 KiB; at most `QUEUED_CHUNKS_MAX` chunks wait per direction
//! (the reader stops while the queue is full: backpressure, no unbounded memory).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::die;

const CHUNK_BYTES_MAX: usize = 64 << 10;
const QUEUED_CHUNKS_MAX: usize = 4096;

/// `pairs`: `LISTEN_PORT:TARGET_PORT`, both on 127.0.0.1.
pub fn cmd_delay_proxy(delay_ms: f64, pairs: &[String]) {
    let delay = Duration::from_secs_f64(delay_ms.max(0.0) / 1000.0);
    let mut acceptors = Vec::new();
    for p in pairs {
        let parsed = p
            .split_once(':')
            .and_then(|(l, t)| Some((l.parse::<u16>().ok()?, t.parse::<u16>().ok()?)));
        let (listen, target) =
            parsed.unwrap_or_else(|| die(&format!("--pair {p}: want LISTEN_PORT:TARGET_PORT")));
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .unwrap_or_else(|e| die(&format!("bind 127.0.0.1:{listen}: {e}")));
        acceptors.push(thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (Ok(inbound2), Ok(outbound2)) = (inbound.try_clone(), outbound.try_clone())
                else {
                    continue;
                };
                pump(inbound, outbound, delay);
                pump(outbound2, inbound2, delay);
            }
        }));
    }
    for a in acceptors {
        let _ = a.join();
    }
}

/// Copies `from` to `to` on two threads, each chunk `delay` after it was read; a side that ends
/// or fails ends the direction (and shuts the other side's writing down).
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS_MAX);
    thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
