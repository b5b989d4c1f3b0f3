//! `scripts/quickstart` end to end: successful checks of its local site land in PostgreSQL and
//! show in its final `pipe report`, the page is written, and it stops what it started.

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
    // The final report: the table `pipe report` prints, after the last "TARGET" header.
    let summary = stdout.rsplit("TARGET").next().unwrap_or_default();
    let local = summary
        .lines()
        .find(|l| l.starts_with("local-site "))
        .unwrap_or_else(|| panic!("no local-site row in the final report:\n{stdout}"));
    let columns: Vec<&str> = local.split_whitespace().collect();
    let checks: u32 = columns[1].parse().unwrap();
    assert!(checks >= 1, "{local}");
    assert_eq!(columns[2], "100.00%", "{local}");
    assert_eq!(columns[3], "0", "no incident: {local}");
    assert_eq!(columns[8], "up", "the last result: {local}");
    let page =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/quickstart/report.html");
    assert!(
        stderr.contains(&format!("{}", page.display())),
        "says where the page is:\n{stderr}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("data-target=\"local-site\""));
    // The site it served is gone.
    assert!(
        std::net::TcpStream::connect("127.0.0.1:18766").is_err(),
        "the local site still runs"
    );
}
