//! `load`: writes keys `0..N` once (the preload before the read scenarios).

use std::time::Duration;
use std::time::Instant;

use crate::args::LoadArgs;
use crate::wire::{b64, key_name, one, value_bytes, Op, Outcome, Wire};

pub fn cmd_load(a: &LoadArgs) {
    let system = a.system;
    let addr = a.target.clone();
    let keys: u64 = a.keys;
    let clients: u64 = a.clients;
    let value_size: usize = a.value_size;
    let limit = Duration::from_secs(a.max_seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .expect("runtime");
    let value = value_bytes(value_size);
    let value_b64 = b64(&value);
    let t0 = Instant::now();
    let (ok, failed) = rt.block_on(async move {
        let deadline = t0 + limit;
        let mut hs = Vec::new();
        for c in 0..clients {
            let wire = Wire {
                system,
                host: addr.clone(),
                value: value.clone(),
                value_b64: value_b64.clone(),
            };
            let addr = addr.clone();
            hs.push(tokio::spawn(async move {
                let mut sender = None;
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = c;
                while i < keys && Instant::now() < deadline {
                    let key = key_name(i);
                    let mut done = false;
                    for attempt in 0..5 {
                        let out = one(
                            &mut sender,
                            &addr,
                            wire.request(Op::Write, &key),
                            Op::Write,
                            system,
                            Duration::from_secs(10),
                        )
                        .await;
                        if matches!(out, Outcome::Ok) {
                            done = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                    if done {
                        ok += 1
                    } else {
                        failed += 1
                    }
                    i += clients;
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for h in hs {
            let (o, f) = h.await.expect("load task");
            ok += o;
            failed += f;
        }
        (ok, failed)
    });
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "loaded={ok}\nload_failed={failed}\nload_s={secs:.1}\nload_ops_per_s={:.0}",
        ok as f64 / secs
    );
    if failed > 0 || ok < keys {
        std::process::exit(1);
    }
}
