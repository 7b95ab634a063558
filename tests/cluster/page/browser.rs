//! Headless Chromium for the page story: a bounded run with a profile of its own, kept off
//! every network but loopback, and what the page shows read back from its dumped DOM.
//!
//! What it owns: the Chromium processes it starts (each in its own process group, killed by
//! that group's id past `CHROMIUM_RUN_MAX`) and their output files. Invariant: a run never
//! outlives its deadline.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::POLL_INTERVAL;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on one Chromium run (it is killed past this).
const CHROMIUM_RUN_MAX: Duration = Duration::from_secs(60);
/// Virtual time the page gets to run before the DOM is dumped (a few of its 1 s updates).
const DUMP_BUDGET_MS: u64 = 3500;
/// Virtual time before a screenshot: enough updates for the charts to draw a line.
const SCREENSHOT_BUDGET_MS: u64 = 12_000;

/// Whether Chromium is there; without it the test returns early after saying so loudly, and
/// fails instead when `CI` is set (CI must never skip this test).
pub fn chromium_or_skip(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    assert!(
        !ci,
        "{test}: {CHROMIUM} is not installed, and CI never skips this test \
         (apt-get install chromium)"
    );
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: {CHROMIUM} is not installed.\n\
         !!! Install it with: apt-get install chromium\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

/// Headless Chromium with a profile of its own (inside `dir`), kept off every network but
/// loopback; each run is bounded by `CHROMIUM_RUN_MAX` and killed past it.
pub struct Browser {
    dir: PathBuf,
    runs: usize,
}

impl Browser {
    pub fn new(dir: &Path) -> Browser {
        fs::create_dir_all(dir.join("profile")).expect("create the Chromium profile dir");
        Browser {
            dir: dir.to_owned(),
            runs: 0,
        }
    }

    /// Runs Chromium on `url` with `extra` flags; its stdout, or why it failed.
    fn run(&mut self, url: &str, budget_ms: u64, extra: &[String]) -> Result<String, String> {
        self.runs += 1;
        let out_path = self.dir.join(format!("run{}.out", self.runs));
        let err_path = self.dir.join(format!("run{}.err", self.runs));
        let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let err = fs::File::create(&err_path).map_err(|e| e.to_string())?;
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-pings",
                "--no-proxy-server",
                // Nothing resolves but the nodes' loopback IP: the browser reaches no other host.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ])
            .arg(format!(
                "--user-data-dir={}",
                self.dir.join("profile").display()
            ))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .process_group(0) // its helpers (renderer, zygote) share its group: killed together
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {CHROMIUM}: {e}"))?;
        let deadline = Instant::now() + CHROMIUM_RUN_MAX;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() >= deadline {
                // Our own child's process group, by its id (the group id is its pid).
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("chromium ran past {CHROMIUM_RUN_MAX:?}; killed"));
            }
            std::thread::sleep(POLL_INTERVAL); // polling period, not synchronisation
        };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        if status.success() {
            Ok(stdout)
        } else {
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            Err(format!("chromium exited {status}: {}", tail.join(" | ")))
        }
    }

    pub fn dump_dom(&mut self, url: &str) -> Result<String, String> {
        self.run(url, DUMP_BUDGET_MS, &["--dump-dom".to_owned()])
    }

    pub fn screenshot(&mut self, url: &str, path: &Path) -> Result<(), String> {
        let _ = fs::remove_file(path);
        self.run(
            url,
            SCREENSHOT_BUDGET_MS,
            &[
                format!("--screenshot={}", path.display()),
                "--window-size=1200,800".to_owned(),
                "--hide-scrollbars".to_owned(),
            ],
        )?;
        match fs::metadata(path) {
            Ok(m) if m.len() > 0 => Ok(()),
            _ => Err(format!("no screenshot at {}", path.display())),
        }
    }
}

/// What the page shows, read from its dumped DOM.
#[derive(Debug, PartialEq)]
pub struct Shown {
    pub leader: String,
    /// Per member (by name): its attributes (`data-role`, `data-reachable`, `class`).
    pub members: BTreeMap<String, BTreeMap<String, String>>,
    /// The leader changes listed, newest first, as (old, new).
    pub changes: Vec<(String, String)>,
    /// `data-health` of this node's health: `true`, `false` or `unknown`.
    pub health: String,
    /// The rates shown beside the charts (a number, `…` before the second update, `n/a`).
    pub writes_rate: String,
    pub reads_rate: String,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The attributes of an opening tag's text (`tr data-member="n1" class="leader"`).
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(' ').next().unwrap_or("").to_owned();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        out.insert(name, unescape(&rest[value_start..value_start + len]));
        rest = &rest[value_start + len + 1..];
    }
    out
}

/// The text of the element with id `id` (one without child elements), and its attributes.
fn element(dom: &str, id: &str) -> Option<(String, BTreeMap<String, String>)> {
    let at = dom.find(&format!(" id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let text_start = at + dom[at..].find('>')? + 1;
    let text_len = dom[text_start..].find('<')?;
    let attrs = attributes(&dom[tag_start..text_start - 1]);
    Some((unescape(&dom[text_start..text_start + text_len]), attrs))
}

fn text_of(dom: &str, id: &str) -> Option<String> {
    element(dom, id).map(|(text, _)| text)
}

/// Reads the leader and the member rows out of the page's DOM; `None` before the page has
/// rendered a view.
pub fn shown(dom: &str) -> Option<Shown> {
    if !dom.contains("data-state=\"live\"") {
        return None;
    }
    let leader = text_of(dom, "leader")?;
    let mut members = BTreeMap::new();
    for piece in dom.split("<tr ").skip(1) {
        let attrs = attributes(&piece[..piece.find('>')?]);
        if let Some(name) = attrs.get("data-member") {
            members.insert(name.clone(), attrs);
        }
    }
    let mut changes = Vec::new();
    for piece in dom.split("<li ").skip(1) {
        let attrs = attributes(&piece[..piece.find('>')?]);
        if let (Some(old), Some(new)) = (attrs.get("data-old"), attrs.get("data-new")) {
            changes.push((old.clone(), new.clone()));
        }
    }
    let (_, health) = element(dom, "health")?;
    Some(Shown {
        leader,
        members,
        changes,
        health: health.get("data-health").cloned().unwrap_or_default(),
        writes_rate: text_of(dom, "writes-rate")?,
        reads_rate: text_of(dom, "reads-rate")?,
    })
}
