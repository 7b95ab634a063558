//! The scripted etcdctl sessions, as data: each step is one etcdctl command line, run against
//! every endpoint of a cluster or only the first. Placeholders in arguments are filled per
//! cluster from what etcdctl itself reports (see [`Context`]), so the same session runs
//! unchanged on etcd and on raftkv:
//! - `{id0}`: the member id of the first endpoint, in hex as etcdctl prints it;
//! - `{peer0}`: that member's first peer URL.
//!
//! [`CLUSTER`] runs today. `KV` (put/get with prefix, from-key, limit, rev, sort, keys-only;
//! del with prefix and prev-kv; txn in both branches, interactive and from stdin; compaction and
//! a read below it; `endpoint health`, which is a Range on the key `health`) is added here as
//! data once raftkv serves the KV RPCs, and `differential.rs` runs it the same way.

use serde_json::Value;

use crate::etcdctl;

/// Which endpoints a step talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    All,
    First,
}

#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub args: &'static [&'static str],
    pub stdin: Option<&'static str>,
    pub endpoints: Endpoints,
    /// Key/value output: compared in order, values as data (see `normalize_ordered`).
    pub kv: bool,
}

const fn all(args: &'static [&'static str]) -> Step {
    Step {
        args,
        stdin: None,
        endpoints: Endpoints::All,
        kv: false,
    }
}

const fn first(args: &'static [&'static str]) -> Step {
    Step {
        args,
        stdin: None,
        endpoints: Endpoints::First,
        kv: false,
    }
}

/// A key/value step against the first endpoint (writes and reads go through it; which member
/// serves does not change the answer).
const fn kv(args: &'static [&'static str]) -> Step {
    Step {
        args,
        stdin: None,
        endpoints: Endpoints::First,
        kv: true,
    }
}

/// `etcdctl txn` reading its compares and branches from stdin.
const fn txn(args: &'static [&'static str], stdin: &'static str) -> Step {
    Step {
        args,
        stdin: Some(stdin),
        endpoints: Endpoints::First,
        kv: true,
    }
}

/// Keys and values, ranges (prefix, from-key, limit, revision, sort, keys-only, value-only),
/// deletes (prefix, prev-kv), transactions in both branches (stdin, and `-w json`),
/// compaction and reads below it, and etcd's errors for them. Both clusters start at
/// revision 1, so revisions are compared as they are.
pub const KV: &[Step] = &[
    kv(&["put", "foo", "bar"]),
    kv(&["put", "foo1", "one"]),
    kv(&["put", "foo2", "two"]),
    kv(&["put", "foo", "bar2", "--prev-kv"]),
    kv(&["put", "zoo", "z"]),
    kv(&["get", "foo"]),
    kv(&["get", "foo", "-w", "json"]),
    kv(&["get", "foo", "--prefix"]),
    kv(&["get", "foo", "--prefix", "--limit", "2", "-w", "json"]),
    kv(&["get", "foo1", "--from-key"]),
    kv(&["get", "foo", "--prefix", "--keys-only"]),
    kv(&["get", "foo", "--prefix", "--print-value-only"]),
    kv(&[
        "get",
        "foo",
        "--prefix",
        "--sort-by=MODIFY",
        "--order=DESCEND",
    ]),
    kv(&[
        "get",
        "foo",
        "--prefix",
        "--sort-by=VALUE",
        "--order=ASCEND",
        "--limit",
        "2",
    ]),
    kv(&["get", "foo", "--rev=2"]),
    kv(&["get", "foo", "--rev=2", "-w", "json"]),
    kv(&["get", "nothing"]),
    kv(&["get", "foo", "--rev=1000"]),
    txn(
        &["txn"],
        "value(\"foo1\") = \"one\"\n\nput foo1 uno\nget foo1\n\nput foo1 never\n\n",
    ),
    txn(
        &["txn", "-w", "json"],
        "mod(\"foo2\") > \"100\"\n\nput foo2 never\n\nget foo2\ndel zoo\n\n",
    ),
    txn(
        &["txn"],
        "version(\"foo\") = \"2\"\ncreate(\"nope\") = \"0\"\n\nput a 1\nput b 2\n\n\n",
    ),
    // Interactive (prompts on stdout), as a user at a terminal would type it.
    txn(
        &["txn", "-i"],
        "value(\"a\") = \"1\"\n\nput a 11\n\nget a\n\n",
    ),
    kv(&["get", "a", "--prefix", "-w", "json"]),
    kv(&["put", "k", "v", "--lease=1234"]),
    kv(&["put", "missing", "--ignore-value"]),
    kv(&["del", "foo2", "--prev-kv"]),
    kv(&["del", "foo", "--prefix"]),
    kv(&["del", "foo", "--prefix"]),
    kv(&["get", "foo", "--prefix", "--rev=4"]),
    kv(&["compaction", "5"]),
    kv(&["get", "foo", "--rev=4"]),
    kv(&["get", "foo1", "--rev=5"]),
    kv(&["compaction", "5"]),
    kv(&["compaction", "100000"]),
    kv(&["get", "", "--from-key", "-w", "json"]),
];

/// Membership, status and alarms: what raftkv's etcd API serves before the KV store lands.
pub const CLUSTER: &[Step] = &[
    all(&["member", "list"]),
    all(&["member", "list", "-w", "table"]),
    all(&["member", "list", "-w", "json"]),
    all(&["endpoint", "status"]),
    all(&["endpoint", "status", "-w", "table"]),
    all(&["endpoint", "status", "-w", "json"]),
    // etcdctl sends each member's URL as the HTTP/2 `:authority` here, which
    // src/serve/authority.rs mends for h2.
    first(&["endpoint", "status", "--cluster"]),
    first(&["endpoint", "health", "--cluster"]),
    first(&["defrag"]),
    first(&["defrag", "--cluster"]),
    all(&["alarm", "list"]),
    all(&["alarm", "disarm"]),
    // Error cases: etcd's codes and exact texts.
    first(&["member", "remove", "1"]),
    first(&["member", "promote", "{id0}"]),
    first(&["member", "add", "newbie", "--peer-urls={peer0}"]),
];

/// What a session needs to know about one cluster.
pub struct Context {
    pub endpoints: Vec<String>,
    pub volatile: etcdctl::Volatile,
    pub id0: String,
    pub peer0: String,
}

impl Context {
    /// Learns `{id0}` and `{peer0}` through etcdctl itself (so etcd and raftkv are treated
    /// alike).
    pub fn new(endpoints: Vec<String>, names: Vec<String>) -> Context {
        let first = &endpoints[..1];
        let status = etcdctl::run(first, &["endpoint", "status", "-w", "json"], None);
        let status: Value = serde_json::from_str(&status.stdout)
            .unwrap_or_else(|e| panic!("endpoint status -w json: {e}: {status:?}"));
        let id = status[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("member_id");
        let list = etcdctl::run(first, &["member", "list", "-w", "json"], None);
        let list: Value = serde_json::from_str(&list.stdout)
            .unwrap_or_else(|e| panic!("member list -w json: {e}: {list:?}"));
        let peer0 = list["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["ID"].as_u64() == Some(id)))
            .and_then(|m| m["peerURLs"][0].as_str())
            .expect("the first endpoint's member and its peer URL")
            .to_string();
        Context {
            endpoints,
            volatile: etcdctl::Volatile { names },
            id0: format!("{id:x}"),
            peer0,
        }
    }

    /// Runs one step: placeholders filled, output normalised.
    pub fn run(&self, step: &Step) -> etcdctl::Out {
        let args: Vec<String> = step
            .args
            .iter()
            .map(|a| {
                a.replace("{id0}", &self.id0)
                    .replace("{peer0}", &self.peer0)
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let endpoints = match step.endpoints {
            Endpoints::All => &self.endpoints[..],
            Endpoints::First => &self.endpoints[..1],
        };
        let out = etcdctl::run(endpoints, &args, step.stdin);
        if step.kv {
            etcdctl::normalize_ordered(&out, &self.volatile)
        } else {
            etcdctl::normalize(&out, &self.volatile)
        }
    }
}
