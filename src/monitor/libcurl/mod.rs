//! A libcurl agent: one thread driving libcurl's multi interface, to which async code hands
//! transfers and from which it awaits their outcomes.
//!
//! `http_probe` runs every check through one of these (one agent per core). The agent keeps
//! its easy handles and reuses them, reads each outcome (status, timings, addresses, body) on
//! its own thread, and crosses to the runtime once per transfer, with the finished outcome; the
//! runtime wakes the agent only while it waits. isahc, which this replaces, built a new easy
//! handle per request and crossed between the threads several times per check: a check cost
//! about 115 µs of CPU through it and about 90 µs through this (BENCHMARKS.md, "Checker").
//!
//! The loop follows libcurl's own `multi-poll.c` example: `curl_multi_perform`, read the
//! finished transfers, `curl_multi_poll`, which `curl_multi_wakeup` ends from another thread.
//!
//! Two hooks reach below libcurl's options. TLS details come from a verify callback installed
//! in each connection's `SSL_CTX` (libcurl's `CURLOPT_SSL_CTX_FUNCTION`): it sees the
//! negotiated protocol, the cipher and the server's certificates while the handshake runs, so
//! a refused certificate is reported as fully as an accepted one. The private-address guard
//! is libcurl's `CURLOPT_OPENSOCKETFUNCTION`, which is handed the address about to be
//! connected to, after DNS resolution ([`crate::monitor::ip_guard`]).

mod agent;
mod guard;
mod tls;
mod transfer;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::monitor::check::TlsInfo;

pub use agent::Agent;

/// Which address family a transfer may connect over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpVersion {
    /// Whatever the name resolves to, IPv6 first when both work (libcurl's happy eyeballs).
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// What to fetch, and how. Built by the caller for each transfer.
#[derive(Debug)]
pub struct Request {
    /// The URL to fetch.
    pub url: Arc<str>,
    /// The HTTP method.
    pub method: Method,
    /// Header lines, `Name: value`.
    pub headers: Arc<[String]>,
    /// The request body, if any.
    pub body: Option<Bytes>,
    /// For the whole transfer, redirects included; libcurl enforces it.
    pub timeout: Duration,
    /// Redirects followed at most; 0 follows none.
    pub max_redirects: u32,
    /// Open a new connection and resolve the name afresh, instead of reusing either.
    pub fresh_connection: bool,
    /// Body bytes read at most; a longer body ends the transfer as too large.
    pub max_body_bytes: u64,
    /// Keep the body (up to `max_body_bytes`) in the outcome.
    pub keep_body: bool,
    /// The address family to connect over.
    pub ip_version: IpVersion,
    /// A proxy URL (`http://`, `https://`, `socks5://`, `socks5h://`), credentials included.
    pub proxy: Option<Arc<str>>,
    /// A PEM file of CA certificates to trust instead of the system's.
    pub ca_file: Option<Arc<Path>>,
    /// Refuse to connect to loopback, private, link-local and other reserved addresses.
    pub deny_private_addresses: bool,
}

/// libcurl's cumulative timers, from the start of the transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Times {
    /// Until the name was resolved.
    pub name_lookup: Duration,
    /// Until the TCP connection was open.
    pub connect: Duration,
    /// Until the TLS handshake was done (zero without TLS).
    pub app_connect: Duration,
    /// Until the first response byte.
    pub start_transfer: Duration,
    /// The whole transfer, redirects included.
    pub total: Duration,
}

/// What happened to a transfer.
#[derive(Debug)]
pub struct Outcome {
    /// libcurl's verdict. A body over the limit shows here as a write error, with
    /// `body_too_large` set.
    pub result: Result<(), curl::Error>,
    /// Whether the body was cut at `max_body_bytes`.
    pub body_too_large: bool,
    /// The last response's status code, if one arrived.
    pub status: Option<u16>,
    /// The last response's protocol, as on its status line (`HTTP/1.1`, `HTTP/2`).
    pub http_version: Option<&'static str>,
    /// The address connected to, `ip:port`.
    pub remote_addr: Option<String>,
    /// Body bytes read (at most the limit).
    pub body_bytes: u64,
    /// The body, when asked to keep it.
    pub body: Option<Vec<u8>>,
    /// libcurl's timers for the transfer.
    pub times: Times,
    /// The TLS connection and the server's leaf certificate, when a handshake got that far
    /// (`cert_expires_soon` left false: judging it is the caller's).
    pub tls: Option<TlsInfo>,
    /// The address the private-address guard refused, and why, when it refused one.
    pub refused_address: Option<(IpAddr, &'static str)>,
}
