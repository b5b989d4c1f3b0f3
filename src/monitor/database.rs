//! Connecting to PostgreSQL: libpq-style URLs, TLS that follows `sslmode`, and a pool.
//!
//! rust-postgres itself knows only `sslmode` disable, prefer and require, rejects libpq's
//! `verify-ca`, `verify-full` and `sslrootcert`, and verifies nothing on its own: verification is
//! the TLS connector's. So this module takes those parameters out of the URL and sets the
//! OpenSSL connector up to match libpq:
//!
//! | `sslmode` | TLS | verifies the certificate chain | verifies the host name |
//! | --- | --- | --- | --- |
//! | `disable` | no | | |
//! | `allow`, `prefer` (the default) | if the server offers it | with `sslrootcert` | with `sslrootcert` |
//! | `require` | yes | with `sslrootcert` | with `sslrootcert` |
//! | `verify-ca` | yes | yes (`sslrootcert`, else the system's roots) | no |
//! | `verify-full` | yes | yes (`sslrootcert`, else the system's roots) | yes |
//!
//! `require` with a CA file (what Aiven gives) verifies both chain and host name: stricter than
//! libpq, which would check the chain only, because a CA file given is a CA file meant.
//!
//! The URL's password never appears in a message: [`Database`]'s `Display` and every error
//! built here show the URL with the password replaced by `***`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres::config::SslMode as PgSslMode;
use postgres_openssl::MakeTlsConnector;
use r2d2_postgres::PostgresConnectionManager;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext, then TLS if refused (treated as `prefer` here).
    Allow,
    /// TLS if the server offers it, else plaintext; libpq's default.
    Prefer,
    /// TLS, verifying the server against `sslrootcert` when one is given.
    Require,
    /// TLS, verifying the certificate's chain against `sslrootcert`.
    VerifyCa,
    /// TLS, verifying the chain and the host name.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode `{other}`: use disable, allow, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }
}

/// A database to connect to, parsed and with its TLS set up.
#[derive(Clone)]
pub struct Database {
    config: postgres::Config,
    tls: MakeTlsConnector,
    ssl_mode: SslMode,
    redacted: String,
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.redacted)
            .field("ssl_mode", &self.ssl_mode)
            .finish()
    }
}

use crate::monitor::secrets::redact_url;

/// Replaces the URL's password in `message`.
fn scrub(message: &str, url: &str) -> String {
    match crate::monitor::secrets::url_password(url) {
        Some(password) if password.len() >= 2 => message.replace(password, "***"),
        _ => message.to_owned(),
    }
}

impl Database {
    /// Parses a libpq-style URL (`postgres://user:password@host:port/db?sslmode=…&sslrootcert=…`).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let redacted = redact_url(url);
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert: Option<String> = None;
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => ssl_mode = value.parse()?,
                "sslrootcert" => root_cert = Some(percent_decode(value)),
                _ => passed_on.push(pair),
            }
        }
        let rest = if passed_on.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed_on.join("&"))
        };
        let mut config = postgres::Config::from_str(&rest).map_err(|e| {
            format!(
                "invalid database URL {redacted}: {}",
                scrub(&e.to_string(), url)
            )
        })?;
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let tls = connector(ssl_mode, root_cert.as_deref())
            .map_err(|e| format!("database URL {redacted}: {e}"))?;
        Ok(Self {
            config,
            tls,
            ssl_mode,
            redacted,
        })
    }

    /// The `sslmode` the URL asked for.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Opens one connection (blocking: call it inside `spawn_blocking` from async code).
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        self.config.connect(self.tls.clone())
    }

    /// A connection manager for an r2d2 pool.
    pub fn manager(&self) -> PostgresConnectionManager<MakeTlsConnector> {
        PostgresConnectionManager::new(self.config.clone(), self.tls.clone())
    }
}

fn connector(mode: SslMode, root_cert: Option<&str>) -> Result<MakeTlsConnector, String> {
    let mut builder =
        SslConnector::builder(SslMethod::tls_client()).map_err(|e| format!("TLS set-up: {e}"))?;
    let verify_chain =
        root_cert.is_some() || matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let verify_host = match mode {
        SslMode::VerifyFull => true,
        SslMode::VerifyCa => false,
        _ => root_cert.is_some(),
    };
    if let Some(path) = root_cert {
        builder
            .set_ca_file(path)
            .map_err(|e| format!("cannot load sslrootcert `{path}`: {e}"))?;
    }
    builder.set_verify(if verify_chain {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });
    let mut connector = MakeTlsConnector::new(builder.build());
    if !verify_host {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Owns a value whose drop blocks (a pool of sync PostgreSQL clients, which start a runtime of
/// their own to close) and, when dropped on a tokio thread, drops it on a thread of its own
/// instead of panicking there. Covers every way a sink ends: done, failed, or aborted.
pub struct DropOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DropOffRuntime<T> {
    /// Takes ownership of `value`.
    pub fn new(value: T) -> Self {
        Self(Some(value))
    }
}

impl<T: Send + 'static> std::ops::Deref for DropOffRuntime<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for DropOffRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(value));
            } else {
                drop(value);
            }
        }
    }
}

/// A database error as one line: the server's SQLSTATE, message and context, or the client's
/// error with its causes.
pub fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut message = format!("{}: {}", db.code().code(), db.message());
            if let Some(context) = db.where_() {
                message = format!("{message} ({})", context.replace('\n', "; "));
            }
            message
        }
        None => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            message
        }
    }
}

/// Is this error worth retrying: the connection or the server, not the data?
///
/// SQLSTATE classes 08 (connection), 53 (resources), 57 (operator intervention: shutdown,
/// admin termination) and 40001/40P01 (serialization failure, deadlock) are transient; an error
/// without a SQLSTATE is an I/O or protocol failure, also transient. Everything else (22 data,
/// 23 integrity…) is permanent for the row that caused it.
pub fn is_transient(error: &postgres::Error) -> bool {
    match error.code() {
        None => true,
        Some(state) => {
            let code = state.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_and_understood() {
        let db = Database::from_url(
            "postgres://u:pw@db.example:5432/checks?sslmode=verify-full&application_name=pipe",
        )
        .unwrap();
        assert_eq!(db.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(db.config.get_application_name(), Some("pipe"));
        assert_eq!(db.config.get_ssl_mode(), PgSslMode::Require);
        let db = Database::from_url("postgres://u@localhost/db").unwrap();
        assert_eq!(db.ssl_mode(), SslMode::Prefer, "libpq's default");
        let db = Database::from_url("postgres://u@localhost/db?sslmode=disable").unwrap();
        assert_eq!(db.config.get_ssl_mode(), PgSslMode::Disable);
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        let db = Database::from_url("postgres://writer:s3cr3tpw@db.example/checks?sslmode=require")
            .unwrap();
        assert_eq!(
            db.to_string(),
            "postgres://writer:***@db.example/checks?sslmode=require"
        );
        assert!(!format!("{db:?}").contains("s3cr3tpw"));
        let error =
            Database::from_url("postgres://writer:s3cr3tpw@db.example/checks?sslmode=sometimes")
                .unwrap_err();
        assert!(
            error.contains("unknown sslmode `sometimes`") && !error.contains("s3cr3tpw"),
            "{error}"
        );
        let error = Database::from_url("postgres://writer:s3cr3tpw@db.example:notaport/checks")
            .unwrap_err();
        assert!(!error.contains("s3cr3tpw"), "{error}");
        let error = Database::from_url("postgres://writer:s3cr3tpw@db.example/c?sslmode=require&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(
            error.contains("cannot load sslrootcert `/nonexistent/ca.pem`")
                && !error.contains("s3cr3tpw"),
            "{error}"
        );
    }

    #[test]
    fn percent_encoded_paths_are_decoded() {
        assert_eq!(percent_decode("%2Fhome%2Fme%2Fca.pem"), "/home/me/ca.pem");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
