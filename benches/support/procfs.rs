//! CPU time of processes, read from /proc, for the benchmarks that count what the broker and
//! PostgreSQL spend besides pipe (`writer`, `checker`). Linux only.

/// A process's command name and CPU seconds (user + system, its reaped children's
/// included), from /proc/PID/stat.
pub fn stat_cpu(path: &std::path::Path) -> Option<(String, f64)> {
    const TICKS: f64 = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    // After the name come state (field 3 of proc_pid_stat(5)) ... utime, stime, cutime,
    // cstime (fields 14-17).
    let ticks: u64 = stat[close + 2..]
        .split(' ')
        .skip(11)
        .take(4)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Some((stat[open + 1..close].to_owned(), ticks as f64 / TICKS))
}

/// CPU seconds so far of process `pid`.
pub fn cpu_of(pid: u32) -> Option<f64> {
    stat_cpu(&std::path::PathBuf::from(format!("/proc/{pid}/stat"))).map(|(_, cpu)| cpu)
}

/// CPU seconds so far of the processes whose command name starts with `name`. PostgreSQL's
/// backends and workers that exited meanwhile are in the postmaster's children's time.
pub fn cpu_seconds(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| stat_cpu(&entry.path().join("stat")))
        .filter(|(command, _)| command.starts_with(name))
        .map(|(_, cpu)| cpu)
        .sum()
}

/// The command name of the broker's processes, for their CPU time.
pub fn broker_process() -> &'static str {
    match std::env::var("PIPE_KAFKA").as_deref() {
        Ok("tansu") => "tansu",
        _ => "java",
    }
}
