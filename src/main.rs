//! The `pipe` binary: the built-in stages and the command line.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: behind a backlog the writer frees thousands of small
/// allocations a batch (the checks' strings) between large ones (the batch's columns), and
/// glibc merged freed chunks on every large free (`malloc_consolidate`, about a quarter of the
/// writer's CPU under `perf`). With mimalloc, over two runs each of 1,000,000 messages
/// (`cargo bench --bench writer -- backlog --batch-size 5000`): pipe's CPU 10.8–12.0 µs a
/// check against 13.0–14.1, the writer 77,491–80,875 checks/s against 67,248–75,118, for a
/// peak of 176–179 MiB resident against 123–139. The library leaves the choice to its users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pipe::cli::main(pipe::Registry::with_builtins())
}
