//! loadgen: the load generator and helper of `bench/run.sh` (raftkv vs etcd, same generator).
//!
//! Closed loop: each client owns ONE HTTP/1.1 keep-alive connection and sends its next request
//! only after the previous one was answered (or timed out). Warm-up requests are not recorded:
//! a request counts only if it STARTED after the warm-up and FINISHED before the end of the
//! measured window. Latency = send of the request until the whole response body is read, in µs,
//! into an HdrHistogram (3 significant digits). Non-2xx answers, timeouts, I/O errors and (etcd)
//! range answers without `kvs` are errors, counted apart and never in the latency histogram.
//!
//! Subcommands (`loadgen help` lists them with their flags; all talk to 127.0.0.1 only; every
//! loop is bounded in time):
//!   run      --system raftkv|etcd --target H:P[,H:P..] --op write|lread|sread|mixed ...
//!            [--api http|grpc]  grpc: etcd's v3 gRPC API (both systems), also --op cas (grpc.rs),
//!            --op lease (l1) and --op watch [--watchers W --watch-conns C --watch-target H:P,..] (w1, watch.rs)
//!   load     --system raftkv|etcd --target H:P --keys N [--clients C]   (writes keys 0..N once)
//!   rtt      [--seconds S]          loopback TCP ping-pong and HTTP round trip
//!   idle     [--ms MS]              idle CPU % of the machine from /proc/stat
//!   raftkv-ready --target H:P --voters N [--timeout S]   prints "LEADER FOLLOWER1 FOLLOWER2.."
//!   etcd-ready   --target H:P,H:P,.. [--timeout S]       prints "LEADER FOLLOWER1 FOLLOWER2.."
//!   delay-proxy --delay-ms D --pair LISTEN:TARGET ..   delays every byte D ms both ways (bench/wan.sh)
//!   put      --system S --target H:P --key K --value V
//!   wait-read --system S --target H:P --key K --value V [--timeout S]  (stale read; prints ms)
//!   fio      FILE.json              summary of a fio --output-format=json run
//!   report   --dir RESULTS          the table (medians over runs)
//!   plot     --dir RESULTS          the scale curve of bench/curve.sh: curve_<op>.svg and a table
//!
//! Modules: `args` (the command line), `wire` (HTTP requests and outcomes), `run` (the
//! measurement), `grpc` (etcd's gRPC API, both systems), `watch` (w1 and l1), `load`, `ready`
//! (cluster readiness, markers), `floor` (round trips, idle CPU, fio), `delay` (the delay proxy), `cpu` (/proc), `report`, `plot` (the scale curve, SVG).

mod args;
mod cpu;
mod delay;
mod floor;
mod grpc;
mod load;
mod plot;
mod ready;
mod report;
mod run;
mod watch;
mod wire;

use clap::Parser;

use args::{Cli, Cmd};

pub use wire::Op;

pub type AnyErr = Box<dyn std::error::Error + Send + Sync>;

pub fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2)
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Run(a) => run::cmd_run(&a),
        Cmd::Load(a) => load::cmd_load(&a),
        Cmd::Rtt { seconds } => floor::cmd_rtt(seconds),
        Cmd::Idle { ms } => floor::cmd_idle(ms),
        Cmd::RaftkvReady(a) => ready::cmd_raftkv_ready(&a),
        Cmd::EtcdReady(a) => ready::cmd_etcd_ready(&a),
        Cmd::DelayProxy { delay_ms, pairs } => delay::cmd_delay_proxy(delay_ms, &pairs),
        Cmd::Put(a) => ready::cmd_put(&a),
        Cmd::WaitRead { key, timeout } => ready::cmd_wait_read(&key, timeout),
        Cmd::Fio { file } => floor::cmd_fio(&file),
        Cmd::Report { dir } => report::cmd_report(&dir),
        Cmd::Plot { dir } => plot::cmd_plot(&dir),
    }
}
