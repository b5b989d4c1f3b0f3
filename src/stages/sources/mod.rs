//! Built-in sources: where events enter a pipeline.

pub mod generate;
pub mod http_probe;
pub mod kafka;
