//! The command line (clap): one subcommand per job of `bench/run.sh` and `bench/ab.sh`.

use clap::{Args, Parser, Subcommand};

use crate::wire::System;

/// The load generator and helper of `bench/run.sh` (raftkv against etcd, the same generator).
/// Everything talks to 127.0.0.1 only; every loop is bounded in time.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Measure one scenario (closed loop, or with --think-ms pauses), print `key=value` lines.
    Run(RunArgs),
    /// Write keys 0..N once.
    Load(LoadArgs),
    /// Loopback TCP ping-pong and HTTP round trip.
    Rtt {
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Idle CPU % of the machine from /proc/stat.
    Idle {
        #[arg(long, default_value_t = 1000)]
        ms: u64,
    },
    /// Wait for a raftkv cluster with N voters and a leader; print "LEADER FOLLOWER1 ..".
    RaftkvReady(RaftkvReadyArgs),
    /// Wait for an etcd cluster with a leader that takes a write; print "LEADER FOLLOWER1 ..".
    EtcdReady(EtcdReadyArgs),
    /// A TCP proxy on 127.0.0.1 that delays every byte by --delay-ms, both ways (bench/wan.sh).
    DelayProxy {
        #[arg(long, default_value_t = 1.0)]
        delay_ms: f64,
        /// LISTEN_PORT:TARGET_PORT (repeatable).
        #[arg(long = "pair", required = true)]
        pairs: Vec<String>,
    },
    /// Put one key.
    Put(KeyArgs),
    /// Poll a stale/serializable read until it returns the value; print the ms it took.
    WaitRead {
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// The summary of a `fio --output-format=json` run.
    Fio { file: String },
    /// The scale-curve pictures (SVG) and table of a `bench/curve.sh` results directory.
    Plot {
        #[arg(long)]
        dir: String,
    },
    /// The BENCHMARKS table (medians over runs) of a results directory.
    Report {
        #[arg(long)]
        dir: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub system: System,
    /// H:P[,H:P..]: clients are spread over these.
    #[arg(long)]
    pub target: String,
    /// write | lread | sread | mixed; with `--api grpc` also cas | lease | watch.
    #[arg(long)]
    pub op: String,
    /// http (the seed API / etcd's JSON gateway) or grpc (etcd's v3 gRPC API, both systems).
    #[arg(long, default_value = "http")]
    pub api: String,
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// `--op mixed`: the share of reads.
    #[arg(long, default_value_t = 90)]
    pub read_pct: u64,
    /// Think time: each client pauses an exponential time with this mean (ms) after each
    /// operation, so its requests arrive spaced out, not back to back; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub think_ms: f64,
    #[arg(long, default_value_t = 10_000)]
    pub req_timeout_ms: u64,
    /// Server PIDs (comma-separated) whose CPU is measured over the window.
    #[arg(long, default_value = "")]
    pub pids: String,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// The generator's runtime threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Also write the result lines to this file.
    #[arg(long)]
    pub out: Option<String>,
    /// `--op watch` (w1): watchers of the prefix.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// `--op watch`: gRPC connections the watchers share.
    #[arg(long, default_value_t = 10)]
    pub watch_conns: usize,
    /// `--op watch`: where the watchers connect (default: `--target`).
    #[arg(long)]
    pub watch_target: Option<String>,
    /// `--op watch`: how long to wait for the watchers to catch up after the window.
    #[arg(long, default_value_t = 30.0)]
    pub drain_s: f64,
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    #[arg(long, value_enum)]
    pub system: System,
    #[arg(long)]
    pub target: String,
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 64)]
    pub clients: u64,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    #[arg(long, default_value_t = 3600)]
    pub max_seconds: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Args, Debug, Clone)]
pub struct RaftkvReadyArgs {
    #[arg(long)]
    pub target: String,
    #[arg(long, default_value_t = 3)]
    pub voters: usize,
    /// Seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Args, Debug, Clone)]
pub struct EtcdReadyArgs {
    /// Every member's client address, comma-separated.
    #[arg(long)]
    pub target: String,
    /// Seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    #[arg(long, value_enum)]
    pub system: System,
    #[arg(long)]
    pub target: String,
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub value: String,
}
