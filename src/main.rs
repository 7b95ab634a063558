//! The `raftkv` binary: parse flags, set up logging, run the node until Ctrl-C or SIGTERM; or
//! run `raftkv restore` (a backup into a new data dir) and exit.

use std::process::ExitCode;

use raftkv::cli::Args;
use raftkv::cli::CliError;

/// jemalloc instead of glibc's malloc: measured with bench/ab.sh (BENCHMARKS.md, "Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: transparent huge pages for the heap
/// (Linux). A restart of a 1M-key node went from 1.08 to 0.68 s (the snapshot's ~400 MB of
/// fresh memory fault in 2 MiB at a time, not 4 KiB) for ~30 MiB more RSS a node; writes and
/// reads did not move (BENCHMARKS.md, "Huge pages for the heap"). `_RJEM_MALLOC_CONF=thp:default`
/// in the environment turns it off (the environment is read after this).
#[cfg(target_os = "linux")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(c"thp:always".as_ptr());

/// jemalloc's `const char *malloc_conf`.
#[cfg(target_os = "linux")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: points at a static string, never written; jemalloc only reads it.
#[cfg(target_os = "linux")]
unsafe impl Sync for MallocConf {}

fn main() -> ExitCode {
    let mut args = match Args::parse_from_env() {
        Ok(args) => args,
        Err(CliError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("raftkv: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(raftkv::cli::Subcommand::Restore(restore)) = args.command.take() {
        return match raftkv::cli::restore::run(restore) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("raftkv restore: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(raftkv::cli::log_filter(&args)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    // A panic anywhere (a spawned task included) is logged; essential tasks turn theirs into a
    // non-zero exit (see `node::run`).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default_hook(info);
    }));

    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("raftkv: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: raftkv::config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(raftkv::node::run(config, shutdown_signal()))?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
