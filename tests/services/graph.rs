//! `pipe graph`'s output, read by Graphviz itself (Debian's graphviz, which scripts/test
//! installs).

use std::process::{Command, Stdio};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn graphviz_accepts_the_graph() {
    let out = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["graph", "pipelines/hello.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let mut dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Graphviz `dot` is needed: scripts/test installs it (package graphviz)");
    std::io::Write::write_all(&mut dot.stdin.take().unwrap(), &out.stdout).unwrap();
    let rendered = dot.wait_with_output().unwrap();
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    assert!(text(&rendered.stdout).contains("<svg"));
}
