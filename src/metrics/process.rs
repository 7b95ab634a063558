//! Process metrics read at scrape time, under the names every Prometheus client library (and
//! etcd) uses: `process_resident_memory_bytes` from `/proc/self/status` and `process_open_fds`
//! from counting `/proc/self/fd`. On systems without `/proc` both are absent from the scrape.
//!
//! Owns: reading and encoding those two figures. Invariant: bounded work per scrape (the fd
//! count stops at [`FDS_COUNTED_MAX`]); blocking file reads, so scrapes run off the executor.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::gauge::ConstGauge;

/// Open file descriptors counted at most per scrape.
pub const FDS_COUNTED_MAX: usize = 1 << 20;

/// The process collector (registered once in `Metrics::new`).
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// Resident set size in bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Open file descriptors (entries of `/proc/self/fd`, minus the one reading it).
pub fn open_fds() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    let count = dir.take(FDS_COUNTED_MAX).count();
    Some(count.saturating_sub(1) as u64)
}

pub(crate) fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// `u64` to a gauge value (saturating: nothing here comes near `i64::MAX`).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        if let Some(rss) = resident_bytes() {
            let help = "Resident memory size in bytes.";
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                help,
                to_i64(rss),
            )?;
        }
        if let Some(fds) = open_fds() {
            let help = "Number of open file descriptors.";
            gauge(&mut encoder, "process_open_fds", help, to_i64(fds))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\traftkv\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_memory_and_fds() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(open_fds().is_some_and(|n| n >= 3));
    }
}
