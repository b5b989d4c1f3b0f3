//! `postgres`: stores check results (and dead letters) in PostgreSQL, each exactly once.
//!
//! Events are cut into batches by `batch_size` and `batch_timeout`; each batch is one
//! transaction: its targets, its checks (one binary `COPY`; a batch holding a check already
//! stored goes again with `INSERT … ON CONFLICT DO NOTHING`, so a check delivered twice is
//! stored once), what the checks it actually inserted add to the hourly and daily rollups
//! (`rollups`) and to the incidents (`incidents`), and its dead letters. Events are
//! acknowledged only after the commit.
//!
//! Transient failures (connection lost, server shutting down or out of connections,
//! serialization failure, deadlock) are retried with capped exponential backoff, acknowledging
//! nothing meanwhile; the pipeline backs up behind the sink, and the Kafka source pauses. A
//! permanent failure caused by one row (a constraint, a value out of range) is isolated: the
//! batch is written again row by row, each under a savepoint, the failing rows go to
//! `dead_letters` with the database's error, and the rest are stored.
//!
//! The synchronous `postgres` client runs its own runtime, so every step that touches the pool
//! (checkout, queries, and returning the connection) happens inside one `spawn_blocking`
//! closure. Such work cannot be cancelled; the connection and statement timeouts bound it.
//!
//! The schema is `migrations/` (applied at start with `migrate: true`). The sink creates the
//! daily partitions of `checks` ahead of time and for any day a batch needs, and its hourly
//! `maintenance` drops partitions past `retention`, compacts finished days' indexes and
//! deletes rollups past `rollup_retention`. `rebuild` (`pipe rollups rebuild`) recomputes
//! rollups and incidents with the same code.

mod config;
mod maintenance;
mod metrics;
mod row;
mod sink;
mod write;

pub use config::PostgresSinkConfig;
