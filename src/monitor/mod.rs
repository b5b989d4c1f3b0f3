//! The monitor's services: what the checker's and the writer's stages share, below the stages
//! and above the framework (docs/architecture.md). Message schema v1 ([`check`]), the slot
//! schedule ([`schedule`]), the libcurl agent ([`libcurl`]) and its address guard
//! ([`ip_guard`]), the Kafka client settings ([`kafka`]), the PostgreSQL connection
//! ([`database`]), its migrations ([`migrate`]) and the history kept in it ([`history`]), and
//! the redaction of secrets ([`secrets`]).

pub mod check;
pub mod database;
pub mod fleet;
pub mod history;
pub mod ip_guard;
pub mod kafka;
pub mod libcurl;
pub mod migrate;
pub mod schedule;
pub mod secrets;
pub mod targets_topic;
