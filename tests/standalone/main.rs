//! The integration tests that need nothing but this crate: the executor with in-memory stages,
//! the checker against HTTP and HTTPS servers of the test's own on 127.0.0.1, and the `pipe`
//! binary from the outside. `cargo test` runs them on a fresh clone. One binary, so that the
//! library is linked once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod checker;
mod checker_tls;
mod cli;
mod executor;
mod probe_details;
