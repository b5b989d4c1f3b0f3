//! The process's own figures, read from `/proc/self` at each scrape: CPU time and resident
//! memory (Linux, where `pipe` runs; elsewhere they are left out).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

#[derive(Debug)]
pub(super) struct ProcessCollector {
    ticks_per_second: f64,
    page_size: f64,
    /// Seconds since the Unix epoch.
    started: f64,
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        // SAFETY: sysconf only reads system constants.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Self {
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as f64 } else { 4096.0 },
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        }
    }

    /// User plus system CPU seconds, from `/proc/self/stat`.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces: count fields after its closing paren.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / self.ticks_per_second)
    }

    /// Resident set size in bytes, from `/proc/self/statm`.
    fn resident_bytes(&self) -> Option<f64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: f64 = statm.split(' ').nth(1)?.parse().ok()?;
        Some(pages * self.page_size)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let start = ConstGauge::new(self.started);
        let metric = encoder.encode_descriptor(
            "pipe_process_start_time",
            "When the process started, in seconds since the Unix epoch",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?;
        start.encode(metric)?;
        if let Some(seconds) = self.cpu_seconds() {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "pipe_process_cpu",
                "CPU time the process has used, user and system",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Some(bytes) = self.resident_bytes() {
            let gauge = ConstGauge::new(bytes);
            let metric = encoder.encode_descriptor(
                "pipe_process_resident_memory",
                "Resident memory of the process",
                Some(&Unit::Bytes),
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_its_own_cpu_and_memory() {
        let collector = ProcessCollector::new();
        assert!(collector.cpu_seconds().is_some_and(|s| s >= 0.0));
        assert!(collector.resident_bytes().is_some_and(|b| b > 1_000_000.0));
    }
}
