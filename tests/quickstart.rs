//! `scripts/quickstart` end to end: successful checks of its local site land in PostgreSQL, and
//! it stops what it started.

use std::process::Command;

#[test]
fn the_quickstart_stores_successful_checks_of_its_local_site() {
    let out = Command::new("scripts/quickstart")
        .args(["--duration", "15s"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PIPE_BIN", env!("CARGO_BIN_EXE_pipe"))
        .env("PIPE_QUICKSTART_PORT", "18766")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary = stdout.rsplit("target").next().unwrap_or_default();
    let local = summary
        .lines()
        .find(|l| l.trim_start().starts_with("local-site "))
        .unwrap_or_else(|| panic!("no local-site row in the final summary:\n{stdout}"));
    let columns: Vec<&str> = local.split('|').map(str::trim).collect();
    let (checks, up): (u32, u32) = (columns[1].parse().unwrap(), columns[2].parse().unwrap());
    assert!(checks >= 1 && up == checks, "{local}");
    assert_eq!(columns[4], "200");
    // The site it served is gone.
    assert!(
        std::net::TcpStream::connect("127.0.0.1:18766").is_err(),
        "the local site still runs"
    );
}
