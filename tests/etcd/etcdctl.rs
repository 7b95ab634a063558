//! Runs `etcdctl` (API v3) the way a user would, and normalises its output so that two clusters
//! can be compared: what differs by construction (member and cluster ids, names, addresses,
//! terms, indexes, sizes, timings) becomes a placeholder, and row order (which follows the
//! endpoints' or members' order) is made canonical. Everything else — columns, fields, flags,
//! versions, errors and exit codes — must match.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// What one `etcdctl` invocation printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    /// Only the `Error: ...` lines of stderr (etcdctl also logs its retries there, as JSON).
    pub error: String,
    /// All of stderr, for diagnostics and for commands that print results there.
    pub stderr: String,
}

/// Runs `etcdctl --endpoints=<endpoints> <args>` with `stdin` fed to it.
pub fn run(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("etcdctl output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        error: stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .collect::<Vec<_>>()
            .join("\n"),
        stderr,
    }
}

/// What is cluster-specific by construction and becomes a placeholder: member names.
#[derive(Debug, Clone, Default)]
pub struct Volatile {
    pub names: Vec<String>,
}

/// `out` with placeholders (see the module docs).
pub fn normalize(out: &Out, volatile: &Volatile) -> Out {
    Out {
        code: out.code,
        stdout: normalize_text(&out.stdout, volatile),
        error: out
            .error
            .lines()
            .map(|l| normalize_line(l, volatile))
            .collect::<Vec<_>>()
            .join("\n"),
        stderr: String::new(),
    }
}

/// For key/value output, where order is the answer (sorted ranges, txn responses) and values
/// are data: only JSON headers' volatile numbers and error lines are normalised.
pub fn normalize_ordered(out: &Out, volatile: &Volatile) -> Out {
    let stdout = match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(mut json) => {
            normalize_json_numbers(&mut json, None);
            serde_json::to_string_pretty(&json).unwrap_or_default()
        }
        Err(_) => out.stdout.clone(),
    };
    Out {
        code: out.code,
        stdout,
        error: out
            .error
            .lines()
            .map(|l| normalize_line(l, volatile))
            .collect::<Vec<_>>()
            .join("\n"),
        stderr: String::new(),
    }
}

fn normalize_json_numbers(v: &mut Value, key: Option<&str>) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                normalize_json_numbers(field, Some(k));
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                normalize_json_numbers(item, key);
            }
        }
        Value::Number(_) if key.is_some_and(|k| VOLATILE_NUMBERS.contains(&k)) => {
            *v = Value::String("<n>".into());
        }
        _ => {}
    }
}

/// JSON (`-w json`), tables (`-w table`) or simple lines (`a, b, c`).
pub fn normalize_text(text: &str, volatile: &Volatile) -> String {
    if let Ok(json) = serde_json::from_str::<Value>(text.trim()) {
        let mut json = json;
        normalize_json(&mut json, None, volatile);
        return serde_json::to_string_pretty(&json).unwrap_or_default();
    }
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('+'))
        .map(|l| normalize_line(l, volatile))
        .collect();
    // Rows follow the endpoints' or members' order, which differs between clusters.
    if lines.first().is_some_and(|l| l.starts_with('|')) {
        lines[1..].sort();
    } else {
        lines.sort();
    }
    lines.join("\n")
}

/// One table row (`| a | b |`) or simple line (`a, b, c`), cell by cell.
fn normalize_line(line: &str, volatile: &Volatile) -> String {
    if let Some(inner) = line.strip_prefix('|') {
        let cells: Vec<String> = inner
            .trim_end_matches('|')
            .split('|')
            .map(|c| normalize_cell(c.trim(), volatile))
            .collect();
        return format!("| {} |", cells.join(" | "));
    }
    line.split(", ")
        .map(|c| normalize_cell(c.trim(), volatile))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One value, recognised by its form.
fn normalize_cell(cell: &str, volatile: &Volatile) -> String {
    if volatile.names.iter().any(|n| n == cell) {
        return "<name>".into();
    }
    if let Some(rest) = cell
        .strip_prefix("http://")
        .or_else(|| cell.strip_prefix("https://"))
    {
        let scheme = &cell[..cell.len() - rest.len()];
        return format!("{scheme}<addr>");
    }
    if is_addr(cell) {
        return "<addr>".into();
    }
    // `member[ADDR]` (etcdctl defrag), `[ADDR]`.
    if let Some((head, rest)) = cell.split_once('[')
        && let Some(inner) = rest.strip_suffix(']')
    {
        let n = normalize_cell(inner, volatile);
        if n.starts_with('<') || n.ends_with('>') {
            return format!("{head}[{n}]");
        }
    }
    // Member ids are printed in hex without padding; terms and indexes never get that long.
    if cell.len() >= 12 && cell.chars().all(|c| c.is_ascii_hexdigit()) {
        return "<id>".into();
    }
    if !cell.is_empty() && cell.chars().all(|c| c.is_ascii_digit()) {
        return "<n>".into();
    }
    if is_size(cell) {
        return "<size>".into();
    }
    // Errors and messages: ids and addresses inside sentences.
    if cell.contains(' ') {
        return cell
            .split(' ')
            .map(|w| {
                let bare = w.trim_end_matches([':', ',', ')']);
                let tail = &w[bare.len()..];
                let n = normalize_cell(bare, volatile);
                if n.starts_with('<') || n.ends_with('>') {
                    format!("{n}{tail}")
                } else {
                    w.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    cell.to_string()
}

fn is_addr(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains(' ')
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
}

/// `822 B`, `20 kB`, `1.2 MB` (etcdctl's humanised sizes).
fn is_size(s: &str) -> bool {
    let Some((n, unit)) = s.split_once(' ') else {
        return false;
    };
    n.parse::<f64>().is_ok() && ["B", "kB", "MB", "GB"].contains(&unit)
}

/// JSON fields holding numbers that differ between clusters by construction.
const VOLATILE_NUMBERS: [&str; 10] = [
    "cluster_id",
    "member_id",
    "raft_term",
    "leader",
    "raftIndex",
    "raftTerm",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
    "ID",
];

fn normalize_json(v: &mut Value, key: Option<&str>, volatile: &Volatile) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                normalize_json(field, Some(k), volatile);
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                normalize_json(item, key, volatile);
            }
            items.sort_by_key(|i| i.to_string());
        }
        Value::Number(_) if key.is_some_and(|k| VOLATILE_NUMBERS.contains(&k)) => {
            *v = Value::String("<n>".into());
        }
        Value::String(s) => *s = normalize_cell(s, volatile),
        _ => {}
    }
}

/// Lease ids differ between two clusters by construction, but the *same* lease must show in
/// the same places: each distinct id becomes `<lease-1>`, `<lease-2>`, ... in the order it first
/// appears in a session's output, wherever it is printed (`%016x` in text, a decimal number in
/// the `ID` / `id` / `lease` fields of `-w json`). One `LeaseIds` per cluster and session.
#[derive(Debug, Default)]
pub struct LeaseIds {
    seen: Vec<u64>,
}

impl LeaseIds {
    fn name(&mut self, id: u64) -> String {
        let n = match self.seen.iter().position(|s| *s == id) {
            Some(i) => i + 1,
            None => {
                self.seen.push(id);
                self.seen.len()
            }
        };
        format!("<lease-{n}>")
    }

    /// Every 16-digit hex word of `line` (etcdctl's `%016x` lease ids) named.
    fn text(&mut self, line: &str) -> String {
        let mut out = String::with_capacity(line.len());
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String, ids: &mut LeaseIds| {
            match u64::from_str_radix(word, 16) {
                Ok(id) if word.len() == 16 => out.push_str(&ids.name(id)),
                _ => out.push_str(word),
            }
            word.clear();
        };
        for c in line.chars() {
            if c.is_ascii_hexdigit() {
                word.push(c);
            } else {
                flush(&mut word, &mut out, self);
                out.push(c);
            }
        }
        flush(&mut word, &mut out, self);
        out
    }
}

/// How far below the granted TTL a `remaining` TTL may be and still count as etcd's answer
/// (seconds). etcd answers `int64(remaining.Seconds())`, truncated: a lease renewed (or granted)
/// just before is `granted - 1`, never `granted`; the slack covers a slow machine between the
/// renewal and the question.
pub const REMAINING_SLACK_S: i64 = 3;

/// A remaining TTL `n` of a lease granted `granted`: a placeholder when it is within
/// `granted - REMAINING_SLACK_S ..= granted - 1`, else the number itself (which then differs).
fn remaining(n: i64, granted: i64) -> String {
    if (granted - REMAINING_SLACK_S..granted).contains(&n) {
        format!("<{}..{}>", granted - REMAINING_SLACK_S, granted - 1)
    } else {
        n.to_string()
    }
}

/// Output of etcdctl's lease commands (and gets of keys with leases), normalised for a
/// differential: lease ids named by `ids` (see [`LeaseIds`]); `remaining(Ns)` and `-w json`'s
/// `ttl` of a time-to-live within [`REMAINING_SLACK_S`] below the granted TTL; JSON headers'
/// cluster and member ids and terms as `<n>` (revisions stay: both clusters start at 1); the
/// ids under `found N leases` and in `leases` sorted (etcd lists them by expiry, which on a
/// follower is no order at all). Exit codes, `Error:` lines and everything else as printed.
pub fn normalize_lease(out: &Out, ids: &mut LeaseIds) -> Out {
    let stdout = match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(mut json) => {
            lease_json(&mut json, ids);
            serde_json::to_string_pretty(&json).unwrap_or_default()
        }
        Err(_) => {
            let mut lines: Vec<String> = out.stdout.lines().map(|l| lease_line(l, ids)).collect();
            if lines.first().is_some_and(|l| l.starts_with("found ")) {
                lines[1..].sort();
            }
            lines.join("\n")
        }
    };
    Out {
        code: out.code,
        stdout,
        error: out
            .error
            .lines()
            .map(|l| ids.text(l))
            .collect::<Vec<_>>()
            .join("\n"),
        stderr: String::new(),
    }
}

/// `lease <id> granted with TTL(60s), remaining(59s)...`: ids named, the remaining TTL checked,
/// the attached keys sorted (etcd lists them in its map's order, which varies run to run).
fn lease_line(line: &str, ids: &mut LeaseIds) -> String {
    let mut line = ids.text(line);
    if let Some(keys) = between(&line, "attached keys([", "])") {
        let mut sorted: Vec<&str> = keys.split(' ').collect();
        sorted.sort_unstable();
        let sorted = sorted.join(" ");
        line = line.replacen(
            &format!("attached keys([{keys}])"),
            &format!("attached keys([{sorted}])"),
            1,
        );
    }
    let granted = between(&line, "TTL(", "s)").and_then(|g| g.parse::<i64>().ok());
    let left = between(&line, "remaining(", "s)");
    match (granted, left.and_then(|l| l.parse::<i64>().ok()), left) {
        (Some(g), Some(n), Some(raw)) => line.replacen(
            &format!("remaining({raw}s)"),
            &format!("remaining({}s)", remaining(n, g)),
            1,
        ),
        _ => line,
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

fn lease_json(v: &mut Value, ids: &mut LeaseIds) {
    match v {
        Value::Object(map) => {
            // A time-to-live: `ttl` is the remaining TTL of `granted-ttl`.
            let granted = map.get("granted-ttl").and_then(Value::as_i64);
            for (k, field) in map.iter_mut() {
                match (k.as_str(), field.as_i64()) {
                    ("ID" | "id" | "lease", Some(id)) if id != 0 => {
                        *field = Value::String(ids.name(id as u64));
                    }
                    ("ttl", Some(n)) if granted.is_some_and(|g| g > 0) => {
                        *field = Value::String(remaining(n, granted.unwrap_or(0)));
                    }
                    ("cluster_id" | "member_id" | "raft_term", _) if field.is_number() => {
                        *field = Value::String("<n>".into());
                    }
                    _ => lease_json(field, ids),
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                lease_json(item, ids);
            }
            items.sort_by_key(|i| i.to_string());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_lose_what_differs_by_construction() {
        let volatile = Volatile {
            names: vec!["n1".into(), "etcd-member-0".into()],
        };
        let ours = "+---+\n|       ID        | STATUS  | NAME |  PEER ADDRS  | IS LEARNER |\n\
                    | 8b37b07b558d4c0 | started |   n1 | http://localhost:24101 |      false |\n";
        let etcds = "| ID | STATUS | NAME | PEER ADDRS | IS LEARNER |\n\
                     | 8e9e05c52164694d | started | etcd-member-0 | http://127.0.0.1:2380 | false |\n";
        assert_eq!(
            normalize_text(ours, &volatile),
            normalize_text(etcds, &volatile)
        );
    }

    #[test]
    fn attached_keys_compare_as_a_set() {
        let line = |keys: &str| {
            lease_line(
                &format!("lease 0a granted with TTL(60s), remaining(59s), attached keys([{keys}])"),
                &mut LeaseIds::default(),
            )
        };
        assert_eq!(line("svc/b svc/a"), line("svc/a svc/b"));
        assert_ne!(line("svc/b svc/a"), line("svc/a svc/c"));
        assert_ne!(line("svc/a"), line("svc/a svc/b"));
    }

    #[test]
    fn lease_ids_are_named_in_order_of_first_appearance_everywhere() {
        let run = |outs: &[&str]| {
            let mut ids = LeaseIds::default();
            outs.iter()
                .map(|o| {
                    let out = Out {
                        code: 0,
                        stdout: o.to_string(),
                        error: String::new(),
                        stderr: String::new(),
                    };
                    normalize_lease(&out, &mut ids).stdout
                })
                .collect::<Vec<_>>()
        };
        // etcd's ids and raftkv's, the same lease in the same places: equal after naming.
        let etcd = run(&[
            "lease 2040a23b12c7f705 granted with TTL(60s)",
            r#"{"cluster_id":3,"member_id":4,"revision":1,"raft_term":2,"ID":2324035782325040905,"TTL":60}"#,
            "lease 2040a23b12c7f705 granted with TTL(60s), remaining(59s), attached keys([a])",
            r#"{"revision":3,"id":2324035782325040905,"ttl":58,"granted-ttl":60,"keys":null}"#,
            "found 2 leases\n2040a23b12c7f705\n2040a23b12c7f709",
        ]);
        let ours = run(&[
            "lease 00003c8f1b2a7e11 granted with TTL(60s)",
            r#"{"cluster_id":9,"member_id":8,"revision":1,"raft_term":7,"ID":77,"TTL":60}"#,
            "lease 00003c8f1b2a7e11 granted with TTL(60s), remaining(57s), attached keys([a])",
            r#"{"revision":3,"id":77,"ttl":59,"granted-ttl":60,"keys":null}"#,
            "found 2 leases\n000000000000004d\n00003c8f1b2a7e11",
        ]);
        assert_eq!(etcd, ours);
        assert_eq!(etcd[0], "lease <lease-1> granted with TTL(60s)");
        assert!(etcd[2].contains("remaining(<57..59>s)"), "{}", etcd[2]);
        assert_eq!(etcd[4], "found 2 leases\n<lease-1>\n<lease-2>");
        // The first lease's id where etcd has a second one, a remaining TTL at the granted TTL
        // (etcd truncates, so never), or one far below it: each still differs.
        let swapped = run(&[
            "lease 00003c8f1b2a7e11 granted with TTL(60s)",
            r#"{"cluster_id":9,"member_id":8,"revision":1,"raft_term":7,"ID":66585333759505,"TTL":60}"#,
        ]);
        assert_ne!(etcd[..2], swapped[..]);
        for wrong in ["remaining(60s)", "remaining(30s)"] {
            let line = format!("lease 00003c8f1b2a7e11 granted with TTL(60s), {wrong}");
            assert!(run(&[&line])[0].ends_with(wrong), "{wrong}");
        }
        // Member ids (unpadded hex, decimal `member_id`) are not lease ids.
        assert_eq!(
            run(&["8e9e05c52164694 is a member"])[0],
            "8e9e05c52164694 is a member"
        );
    }

    #[test]
    fn simple_lines_and_json() {
        let v = Volatile::default();
        assert_eq!(
            normalize_text(
                "127.0.0.1:2379, 8e9e05c52164694d, 3.4.23, 20 kB, true, 2\n",
                &v
            ),
            "<addr>, <id>, 3.4.23, <size>, true, <n>"
        );
        let a = r#"{"header":{"cluster_id":1,"member_id":2,"revision":5},"members":[{"ID":3,"name":"x"}]}"#;
        let b = r#"{"header":{"cluster_id":9,"member_id":8,"revision":5},"members":[{"ID":7,"name":"x"}]}"#;
        assert_eq!(normalize_text(a, &v), normalize_text(b, &v));
        assert_eq!(
            normalize_line("Error: etcdserver: member 8e9e05c52164694d not found", &v),
            "Error: etcdserver: member <id> not found"
        );
    }
}
