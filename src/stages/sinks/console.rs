//! `console`: writes each event as one JSON line to standard output.
//!
//! Logs go to standard error, so stdout carries nothing but data and can be piped to `jq`.

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::ack::AckStatus;
use crate::config::diagnostic::ConfigError;
use crate::registry::{BuildContext, StageConfig};
use crate::stage::{BoxError, Input, Sink, SinkContext};

/// How many ready events are written with one flush.
const BATCH: usize = 256;

/// The settings of the `console` sink.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Pretty-print each event over several lines instead of one JSON line. Default `false`.
    #[serde(default)]
    pub pretty: bool,
}

impl StageConfig for ConsoleConfig {
    const TYPE: &'static str = "console";
    const DESCRIPTION: &'static str = "writes events to standard output as JSON lines";
    type Stage = dyn Sink;

    fn build(self, _cx: &BuildContext) -> Result<Box<dyn Sink>, Vec<ConfigError>> {
        Ok(Box::new(Console { config: self }))
    }
}

struct Console {
    config: ConsoleConfig,
}

#[async_trait]
impl Sink for Console {
    async fn run(self: Box<Self>, mut input: Input, _cx: SinkContext) -> Result<(), BoxError> {
        let mut stdout = tokio::io::stdout();
        let mut events = Vec::with_capacity(BATCH);
        let mut buffer = Vec::new();
        while input.recv_many(&mut events, BATCH).await > 0 {
            buffer.clear();
            for event in &events {
                match (self.config.pretty, event.check()) {
                    (true, Some(check)) => serde_json::to_writer_pretty(&mut buffer, check)?,
                    (true, None) => serde_json::to_writer_pretty(&mut buffer, event.fields())?,
                    (false, _) => buffer.extend_from_slice(&event.to_json()?),
                }
                buffer.push(b'\n');
            }
            stdout.write_all(&buffer).await?;
            stdout.flush().await?;
            for event in events.drain(..) {
                event.finish(AckStatus::Delivered);
            }
        }
        Ok(())
    }
}
