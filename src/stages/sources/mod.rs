//! Built-in sources: where events enter a pipeline.

pub mod generate;
