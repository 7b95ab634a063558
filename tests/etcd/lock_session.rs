//! `etcdctl lock` and `etcdctl elect` against a real etcd 3.4 and against raftkv, transcripts
//! compared. Both commands are built on the client side from leases, transactions and watches
//! (etcd's `concurrency` package), so this checks those three together as etcdctl uses them:
//!
//! - a lock taken with a command runs it and releases;
//! - a lock held by one etcdctl (until it is interrupted) keeps a second one waiting; the second
//!   runs its command once the first lets go;
//! - an election: an observer (`elect -l`), a first candidate that wins and proclaims its value,
//!   a second that waits; interrupting the leader hands leadership to the second, and the
//!   observer prints each leader as it comes.
//!
//! Lock and election keys carry lease ids (`jobs/694d7d…`); the transcript names them
//! `<lease-N>` in order of first appearance. Everything else is compared as printed.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::watch_session::{collect, wait_for};

/// How long a waiter must stay quiet while another holds the lock or leads.
const QUIET_WINDOW: Duration = Duration::from_millis(1500);
/// Bound on every wait for a line or an exit.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// One background etcdctl, its lines as they come; killed on drop.
struct Background {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Background {
    fn start(endpoint: &str, args: &[&str]) -> Background {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Background {
            child,
            stdout,
            stderr,
        }
    }

    /// Its stdout lines so far, then its stderr lines.
    fn lines(&self) -> Vec<String> {
        let mut lines = self.stdout.lock().expect("lines").clone();
        lines.extend(self.stderr.lock().expect("lines").iter().cloned());
        lines
    }

    /// Waits until it printed `n` lines; the lines.
    fn wait_lines(&self, n: usize, what: &str) -> Vec<String> {
        let printed = wait_for(Instant::now() + STEP_TIMEOUT, || self.lines().len() >= n);
        assert!(
            printed,
            "{what}: {n} lines expected within {STEP_TIMEOUT:?}, got {:?}",
            self.lines()
        );
        self.lines()
    }

    /// SIGINT (what Ctrl-C sends), then waits for the exit; its exit code.
    fn interrupt(&mut self) -> i32 {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -INT {pid}");
        self.wait_exit("interrupted etcdctl")
    }

    fn wait_exit(&mut self, what: &str) -> i32 {
        let mut code = None;
        wait_for(Instant::now() + STEP_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                code = Some(status.code().unwrap_or(-1));
            }
            code.is_some()
        });
        code.unwrap_or_else(|| panic!("{what} did not exit within {STEP_TIMEOUT:?}"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The session on the cluster behind `endpoints` (every process on its own member, so the
/// lock and the election also cross members); its transcript, lease ids named.
pub fn run(endpoints: &[String]) -> Vec<String> {
    let at = |i: usize| endpoints[i % endpoints.len()].as_str();
    let mut t = Vec::new();

    // A lock around a command: runs it, exits with it.
    let mut once = Background::start(at(0), &["lock", "jobs", "echo", "ran under the lock"]);
    let code = once.wait_exit("etcdctl lock with a command");
    t.push(format!(
        "lock with a command: exit {code}, printed {:?}",
        once.lines()
    ));

    // A held lock keeps a second taker waiting until it is released.
    let mut holder = Background::start(at(1), &["lock", "jobs"]);
    t.push(format!(
        "holder printed {:?}",
        holder.wait_lines(1, "the lock holder")
    ));
    let mut waiter = Background::start(at(2), &["lock", "jobs", "echo", "second holder ran"]);
    std::thread::sleep(QUIET_WINDOW); // an observation window: the waiter must stay quiet
    t.push(format!(
        "while held, the waiter printed {:?}",
        waiter.lines()
    ));
    t.push(format!("holder interrupted: exit {}", holder.interrupt()));
    let code = waiter.wait_exit("the waiting etcdctl lock");
    t.push(format!(
        "then the waiter: exit {code}, printed {:?}",
        waiter.lines()
    ));

    // An election: an observer, a leader, a second candidate that takes over.
    let observer = Background::start(at(0), &["elect", "-l", "office"]);
    let mut alice = Background::start(at(1), &["elect", "office", "alice"]);
    t.push(format!(
        "alice printed {:?}",
        alice.wait_lines(2, "alice's campaign")
    ));
    t.push(format!(
        "the observer printed {:?}",
        observer.wait_lines(2, "the observer")
    ));
    let mut bob = Background::start(at(2), &["elect", "office", "bob"]);
    std::thread::sleep(QUIET_WINDOW); // an observation window: bob must not lead yet
    t.push(format!("while alice leads, bob printed {:?}", bob.lines()));
    t.push(format!("alice interrupted: exit {}", alice.interrupt()));
    t.push(format!(
        "then bob printed {:?}",
        bob.wait_lines(2, "bob's campaign")
    ));
    t.push(format!(
        "and the observer {:?}",
        observer.wait_lines(4, "the observer")
    ));
    t.push(format!("bob interrupted: exit {}", bob.interrupt()));
    name_leases(&t)
}

/// `jobs/<hex>` and `office/<hex>` become `jobs/<lease-N>`, numbered by first appearance.
fn name_leases(lines: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    lines
        .iter()
        .map(|line| {
            let mut out = String::new();
            let mut rest = line.as_str();
            while let Some(i) = ["jobs/", "office/"]
                .iter()
                .filter_map(|p| rest.find(p).map(|i| i + p.len()))
                .min()
            {
                out.push_str(&rest[..i]);
                rest = &rest[i..];
                let hex = rest.len()
                    - rest
                        .trim_start_matches(|c: char| c.is_ascii_hexdigit())
                        .len();
                if hex == 0 {
                    continue;
                }
                let id = rest[..hex].to_string();
                let n = match seen.iter().position(|s| *s == id) {
                    Some(n) => n,
                    None => {
                        seen.push(id);
                        seen.len() - 1
                    }
                };
                out.push_str(&format!("<lease-{}>", n + 1));
                rest = &rest[hex..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

#[test]
fn lease_ids_in_lock_and_election_keys_are_named_by_first_appearance() {
    let lines = vec![
        "holder printed [\"jobs/694d7d1f2e3a04\"]".to_string(),
        "alice printed [\"office/1a2b\", \"alice\"] then jobs/694d7d1f2e3a04".to_string(),
    ];
    assert_eq!(
        name_leases(&lines),
        vec![
            "holder printed [\"jobs/<lease-1>\"]",
            "alice printed [\"office/<lease-2>\", \"alice\"] then jobs/<lease-1>",
        ]
    );
}
