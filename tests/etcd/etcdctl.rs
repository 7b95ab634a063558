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
