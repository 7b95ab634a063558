//! `etcdctl watch` against a real etcd 3.4 and against raftkv, outputs compared: a key from a
//! past revision, a prefix with previous values, `-w json` (responses and their revisions),
//! an interactive `watch -i` with a progress request, a watch from a compacted revision.
//!
//! A watch never exits by itself, so each case runs `etcdctl watch` in the background, makes
//! its writes with plain etcdctl commands, waits (with a deadline) until the watch printed the
//! lines etcd prints for it or exited, then stops it and compares what it printed — stdout,
//! its `Error:` and `watch was canceled` lines, and its exit code when it exited by itself.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::etcdctl;
use crate::sessions::Context;

/// One background watch and what happens while it runs.
pub struct WatchCase {
    /// etcdctl's arguments (the first endpoint only). `{next}` becomes the next revision.
    pub watch: &'static [&'static str],
    /// Typed into an interactive watch (`watch -i`) at its start.
    pub typed: &'static str,
    /// etcdctl commands run while it watches.
    pub writes: &'static [&'static [&'static str]],
    /// Typed once `lines_before` lines were printed (e.g. `progress`).
    pub typed_after: &'static str,
    pub lines_before: usize,
    /// Lines it prints in all (etcd's count; the run waits for as many, or for an exit).
    pub lines: usize,
}

/// Revisions 2..=5: `foo` put twice and deleted, `fop` put between.
pub const SETUP: &[&[&str]] = &[
    &["put", "foo", "bar"],
    &["put", "foo", "baz"],
    &["put", "fop", "x"],
    &["del", "foo"],
];

pub const WATCH: &[WatchCase] = &[
    WatchCase {
        watch: &["watch", "foo", "--rev=2"],
        typed: "",
        writes: &[],
        typed_after: "",
        lines_before: 0,
        lines: 9,
    },
    WatchCase {
        watch: &["watch", "fo", "--prefix", "--rev=2", "--prev-kv"],
        typed: "",
        writes: &[],
        typed_after: "",
        lines_before: 0,
        lines: 16,
    },
    WatchCase {
        watch: &["watch", "foo", "--rev=2", "-w", "json"],
        typed: "",
        writes: &[],
        typed_after: "",
        lines_before: 0,
        lines: 1,
    },
    WatchCase {
        watch: &["watch", "a", "b", "--rev={next}"],
        typed: "",
        writes: &[&["put", "a1", "x"], &["put", "b", "y"], &["put", "a2", "z"]],
        typed_after: "",
        lines_before: 0,
        lines: 6,
    },
    WatchCase {
        watch: &["watch", "-i"],
        typed: "watch foo --rev={next}\n",
        writes: &[&["put", "foo", "one"], &["del", "foo"]],
        typed_after: "progress\n",
        lines_before: 6,
        lines: 7,
    },
    // Live writes print as text: whether the two arrive in one response or two depends on when
    // the background etcdctl's watch is established (etcd batches writes that predate it), so
    // the response boundaries of `-w json` are compared on a replay only (above).
    WatchCase {
        watch: &["watch", "foo", "--rev={next}", "--prev-kv"],
        typed: "",
        writes: &[&["put", "foo", "two"], &["put", "foo", "three"]],
        typed_after: "",
        lines_before: 0,
        lines: 8,
    },
];

/// After `compaction 4`: a watch from revision 2 is canceled, and etcdctl exits.
pub const COMPACTED: WatchCase = WatchCase {
    watch: &["watch", "foo", "--rev=2"],
    typed: "",
    writes: &[],
    typed_after: "",
    lines_before: 0,
    lines: usize::MAX,
};

/// What a background watch printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printed {
    /// Exit code if it exited by itself.
    pub code: Option<i32>,
    pub stdout: String,
    pub errors: String,
}

/// Collects a child's lines as they come.
pub fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

fn count(lines: &Arc<Mutex<Vec<String>>>) -> usize {
    lines.lock().expect("lines").len()
}

/// Polls until `done` or the deadline; whether `done` held.
pub fn wait_for(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20)); // poll period
    }
    done()
}

/// The next revision of the cluster `ctx` talks to.
fn next_revision(ctx: &Context) -> i64 {
    let out = etcdctl::run(&ctx.endpoints[..1], &["get", "x", "-w", "json"], None);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("get -w json");
    json["header"]["revision"].as_i64().expect("revision") + 1
}

/// Runs one case on `ctx`'s cluster.
pub fn run(ctx: &Context, case: &WatchCase) -> Printed {
    let next = next_revision(ctx).to_string();
    let fill = |s: &str| s.replace("{next}", &next);
    let args: Vec<String> = case.watch.iter().map(|a| fill(a)).collect();
    let mut child: Child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={}", ctx.endpoints[0]))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl watch");
    let mut stdin = child.stdin.take().expect("stdin");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    stdin.write_all(fill(case.typed).as_bytes()).expect("type");
    stdin.flush().expect("flush");
    // etcdctl gives no sign that a watch is established; a watch from `{next}` misses
    // nothing written after it is sent, so the writes may start at once.
    for write in case.writes {
        let w = etcdctl::run(&ctx.endpoints[..1], write, None);
        assert_eq!(w.code, 0, "etcdctl {write:?}: {w:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited = None;
    let mut gone = |child: &mut Child| {
        if exited.is_none() {
            exited = child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| s.code().unwrap_or(-1));
        }
        exited.is_some()
    };
    if !case.typed_after.is_empty() {
        wait_for(deadline, || {
            count(&out) >= case.lines_before || gone(&mut child)
        });
        stdin
            .write_all(fill(case.typed_after).as_bytes())
            .expect("type");
        stdin.flush().expect("flush");
    }
    wait_for(deadline, || count(&out) >= case.lines || gone(&mut child));
    let code = if gone(&mut child) {
        exited
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    };
    // The reader threads finish once the pipes close.
    wait_for(Instant::now() + Duration::from_secs(2), || {
        Arc::strong_count(&out) == 1 && Arc::strong_count(&err) == 1
    });
    let stdout = out.lock().expect("lines").join("\n");
    let errors = err
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.starts_with("Error:") || l.starts_with("watch was canceled"))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    Printed {
        code,
        stdout: normalize(&stdout, ctx),
        errors,
    }
}

/// Each line of JSON output (one response per line) normalised like etcdctl's other JSON.
fn normalize(stdout: &str, ctx: &Context) -> String {
    stdout
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(_) => etcdctl::normalize_text(l, &ctx.volatile),
            Err(_) => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
