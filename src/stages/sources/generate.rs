//! `generate`: emits the configured fields at an interval, for trying pipelines out and for tests.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::MissedTickBehavior;

use crate::config::diagnostic::ConfigError;
use crate::config::duration;
use crate::event::{Event, Fields};
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Source, SourceContext};

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

/// The settings of the `generate` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Time between two events; the first is emitted at once. Default `1s`.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// Emit this many events, then finish. Without it, emit until the pipeline stops.
    #[serde(default)]
    pub count: Option<u64>,
    /// The fields of every event, any YAML value.
    #[serde(default)]
    pub fields: Fields,
}

impl StageConfig for GenerateConfig {
    const TYPE: &'static str = "generate";
    const DESCRIPTION: &'static str =
        "emits the configured fields every `interval`, `count` times or until stopped";
    type Stage = dyn Source;

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Source>, Vec<ConfigError>> {
        if self.interval.is_zero() && self.count.is_none() {
            return Err(ConfigError::at(
                "interval",
                "an interval of 0 needs a `count`, or the source would never pause",
            )
            .into());
        }
        Ok(Box::new(Generate { config: self }))
    }
}

struct Generate {
    config: GenerateConfig,
}

#[async_trait]
impl Source for Generate {
    async fn run(self: Box<Self>, mut cx: SourceContext) -> Result<(), BoxError> {
        let mut ticker = tokio::time::interval(self.config.interval.max(Duration::from_nanos(1)));
        // A slow pipeline delays events; it does not make the source burst to catch up.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent = 0_u64;
        while self.config.count.is_none_or(|count| sent < count) {
            tokio::select! {
                biased;
                () = cx.shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let event = Event::new(self.config.fields.clone());
            tokio::select! {
                biased;
                () = cx.shutdown.cancelled() => break,
                sent_result = cx.out.send(event) => sent_result?,
            }
            sent += 1;
        }
        slog::debug!(cx.logger, "generate finished"; "events" => sent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Result<GenerateConfig, serde_norway::Error> {
        serde_norway::from_str(yaml)
    }

    #[test]
    fn defaults_and_fields() {
        let config = config("fields: { hello: world, n: 3 }").unwrap();
        assert_eq!(config.interval, Duration::from_secs(1));
        assert_eq!(config.count, None);
        assert_eq!(config.fields["hello"], "world");
        assert_eq!(config.fields["n"], 3);
    }

    #[test]
    fn rejects_unknown_fields_and_a_zero_interval_without_count() {
        assert!(config("interva: 1s")
            .unwrap_err()
            .to_string()
            .contains("unknown field `interva`"));
        let cx = BuildContext::new("gen", ".", slog::Logger::root(slog::Discard, slog::o!()));
        let errors = config("interval: 0ms").unwrap().build(&cx).err().unwrap();
        assert_eq!(errors[0].field.as_deref(), Some("interval"));
        assert!(config("interval: 0ms\ncount: 2")
            .unwrap()
            .build(&cx)
            .is_ok());
    }
}
