//! Compiles etcd's `v3lock.proto` and `v3election.proto` (vendored in `proto/`, see
//! `proto/README.md`) into tonic **server** code for `src/api/etcd/lock.rs` and `election.rs`.
//!
//! `etcd-client` compiles these protos too, but keeps the generated module private and
//! re-exports only their response messages, not the request messages nor the server traits;
//! so they are generated here. The two types they borrow from etcd's other packages map onto
//! the ones `etcd_client::proto` re-exports (`extern_path`), so a `LeaderResponse` carries the
//! same `PbKeyValue` the KV service answers with. The other packages protoc parses for the
//! imports are generated into `OUT_DIR` too but never included.
//!
//! protoc: `$PROTOC` when it was set explicitly; otherwise (unset, or the repository's
//! `tools/protoc` launcher that `.cargo/config.toml` hands to build scripts) the binary of the
//! `protoc-bin-vendored` build-dependency directly — the launcher looks for that crate next to
//! the crate being built, which for this crate is not the registry.

use std::path::Path;
use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";
const LOCK: &str = "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto";
const ELECTION: &str = "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-env-changed=PROTOC");

    let mut config = prost_build::Config::new();
    let mut includes = vec![PathBuf::from(PROTO_ROOT)];
    if !explicit_protoc() {
        // Both come from the same vendored crate: the binary and its well-known types.
        if let Ok(protoc) = protoc_bin_vendored::protoc_bin_path() {
            config.protoc_executable(protoc);
        }
        if let Ok(include) = protoc_bin_vendored::include_path() {
            includes.push(include);
        }
    }
    let result = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(
            ".etcdserverpb.ResponseHeader",
            "::etcd_client::proto::PbResponseHeader",
        )
        .extern_path(".mvccpb.KeyValue", "::etcd_client::proto::PbKeyValue")
        .compile_with_config(
            config,
            &[PathBuf::from(LOCK), PathBuf::from(ELECTION)],
            &includes,
        );
    if let Err(e) = result {
        // A build script reports failure by panicking; say what to check.
        panic!("compiling {LOCK} and {ELECTION} failed (protoc: see build.rs): {e}");
    }
}

/// Whether `$PROTOC` names a protoc of the caller's choosing (not unset, not the launcher).
fn explicit_protoc() -> bool {
    let Some(protoc) = std::env::var_os("PROTOC") else {
        return false;
    };
    let launcher = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|dir| Path::new(&dir).join("tools").join("protoc"));
    launcher.as_deref() != Some(Path::new(&protoc))
}
