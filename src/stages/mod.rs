//! The built-in stages, one file (or folder) each under `sources/`, `transforms/` and `sinks/`,
//! and the one list that registers them.
//!
//! Adding a stage is its file plus one line in [`Registry::with_builtins`]. The list lives here,
//! above the registry, so that the registry knows no stage (docs/architecture.md).

pub mod sinks;
pub mod sources;
pub mod transforms;

use crate::registry::Registry;

impl Registry {
    /// A registry with every built-in stage.
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        registry
            .register::<sources::generate::GenerateConfig>()
            .register::<sources::http_probe::HttpProbeConfig>()
            .register::<sources::kafka::KafkaSourceConfig>()
            .register::<transforms::regex_match::RegexMatchConfig>()
            .register::<transforms::latency::LatencyConfig>()
            .register::<sinks::console::ConsoleConfig>()
            .register::<sinks::kafka::KafkaSinkConfig>()
            .register::<sinks::postgres::PostgresSinkConfig>();
        registry
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::Registry;
    use crate::stage::StageKind;

    #[test]
    fn knows_builtins_by_kind_and_name() {
        let registry = Registry::with_builtins();
        assert!(registry.get(StageKind::Sink, "console").is_some());
        assert!(registry.get(StageKind::Source, "console").is_none());
        assert!(registry.type_names(StageKind::Source).contains(&"generate"));
        assert!(registry
            .type_names(StageKind::Transform)
            .contains(&"regex_match"));
    }
}
