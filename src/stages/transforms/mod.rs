//! Built-in transforms: stages that change, enrich or drop events on their way to the sinks.

pub mod latency;
pub mod regex_match;
