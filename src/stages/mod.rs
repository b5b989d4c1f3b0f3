//! The built-in stages, one file each under `sources/`, `transforms/` and `sinks/`.
//!
//! Adding a stage is its file plus one line in [`register_builtins`].

pub mod sinks;
pub mod sources;
pub mod transforms;

use crate::registry::Registry;

/// Registers every built-in stage type.
pub fn register_builtins(registry: &mut Registry) {
    registry
        .register::<sources::generate::GenerateConfig>()
        .register::<sources::http_probe::HttpProbeConfig>()
        .register::<sources::kafka::KafkaSourceConfig>()
        .register::<transforms::regex_match::RegexMatchConfig>()
        .register::<transforms::latency::LatencyConfig>()
        .register::<sinks::console::ConsoleConfig>()
        .register::<sinks::kafka::KafkaSinkConfig>()
        .register::<sinks::postgres::PostgresSinkConfig>();
}
