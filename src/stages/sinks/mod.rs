//! Built-in sinks: where events leave a pipeline, durably.

pub mod console;
pub mod kafka;
pub mod postgres;
