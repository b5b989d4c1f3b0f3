//! The `pipe` binary: the built-in stages and the command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    pipe::cli::main(pipe::Registry::with_builtins())
}
