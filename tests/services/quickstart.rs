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
    // The final report: the table `pipe report` prints, after the last header. Columns are
    // found by their header name, so a new column does not shift what this test reads.
    let (header, summary) = stdout
        .rmatch_indices("TARGET ")
        .next()
        .map(|(i, _)| stdout[i..].split_once('\n').unwrap_or((&stdout[i..], "")))
        .unwrap_or_else(|| panic!("no report table in the output:\n{stdout}"));
    let names: Vec<&str> = header.split_whitespace().collect();
    let local = summary
        .lines()
        .find(|l| l.starts_with("local-site "))
        .unwrap_or_else(|| panic!("no local-site row in the final report:\n{stdout}"));
    let values: Vec<&str> = local.split_whitespace().collect();
    let column = |name: &str| {
        let i = names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no {name} column in {header}"));
        values[i]
    };
    let checks: u32 = column("CHECKS").parse().unwrap();
    assert!(checks >= 1, "{local}");
    assert_eq!(column("UPTIME"), "100.00%", "{local}");
    assert_eq!(column("INC"), "0", "no global incident: {local}");
    assert_eq!(column("REG"), "0", "no regional incident: {local}");
    // LAST is the header's last column; its value starts with the state.
    assert_eq!(column("LAST"), "up", "the last result: {local}");
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
