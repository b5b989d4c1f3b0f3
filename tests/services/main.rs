//! The integration tests that need the local services (PostgreSQL and Apache Kafka, from
//! `scripts/dev-services`) or the tools `scripts/test` installs (Graphviz, promtool, Chromium,
//! systemd-analyze, kafka-python). Built only with `--features service-tests`, which
//! `scripts/test` turns on after starting the services; without them each test fails loudly,
//! naming `scripts/test`. One binary, so that the library is linked once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod deploy;
mod fleet;
mod graph;
mod history;
mod kafka_delivery;
mod kafka_sink;
mod kafka_tls;
mod pipelines;
mod quickstart;
mod rebalance;
mod report;
mod services;
mod targets;
mod telemetry;
mod writer;
mod writer_faults;
