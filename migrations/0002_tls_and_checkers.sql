-- pipe migration 2: what a check records beyond status and timings: the TLS connection and
-- the server's certificate, and which checker (and region) made it.
--
-- Both change rarely next to the checks that carry them (a certificate lives for months; a
-- checker for years), so each distinct value is stored once, in a table of its own, and a
-- check holds its id: 6 bytes a check instead of a few hundred. Old checks and messages
-- without the fields keep nulls.

-- One row per distinct (handshake, leaf certificate) seen. `key` is a v5 UUID of all the other
-- columns, computed by the writer: the natural unique key, which as an index would be too
-- wide (SAN lists run to kilobytes).
CREATE TABLE tls_details (
    id               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key              uuid NOT NULL UNIQUE,
    version          text NOT NULL,
    cipher           text NOT NULL,
    cert_not_before  timestamptz NOT NULL,
    cert_not_after   timestamptz NOT NULL,
    cert_issuer      text NOT NULL,
    cert_subject     text NOT NULL,
    cert_sans        text[] NOT NULL,
    first_seen       timestamptz NOT NULL DEFAULT now()
);

-- "Which certificates end within 14 days?" without reading the checks.
CREATE INDEX tls_details_not_after ON tls_details (cert_not_after);

-- One row per checker identity: its region ('' when it has none) and its name.
CREATE TABLE checkers (
    id          smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    region      text NOT NULL DEFAULT '',
    name        text NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (region, name)
);

ALTER TABLE checks
    ADD COLUMN tls_id             integer,
    ADD COLUMN checker_id         smallint,
    ADD COLUMN cert_expires_soon  boolean;

-- The stable query surface gains the new fields, at its end (so existing queries by position
-- keep working).
CREATE OR REPLACE VIEW check_results AS
SELECT
    c.check_id,
    t.name                                          AS target,
    t.url,
    c.checked_at,
    c.checked_at + c.start_delay_ms * interval '1 millisecond' AS started_at,
    t.method,
    c.status_code,
    c.response_time_us / 1000.0::double precision   AS response_time_ms,
    c.error_kind::text                              AS error_kind,
    c.error_message,
    c.regex_matched,
    c.latency_class::text                           AS latency_class,
    c.up,
    c.dns_us / 1000.0::double precision             AS dns_ms,
    c.connect_us / 1000.0::double precision         AS connect_ms,
    c.tls_us / 1000.0::double precision             AS tls_ms,
    c.first_byte_us / 1000.0::double precision      AS first_byte_ms,
    c.transfer_us / 1000.0::double precision        AS transfer_ms,
    c.body_bytes,
    c.remote_ip,
    c.remote_port,
    CASE c.http_version
        WHEN 9 THEN 'HTTP/0.9' WHEN 10 THEN 'HTTP/1.0' WHEN 11 THEN 'HTTP/1.1'
        WHEN 20 THEN 'HTTP/2' WHEN 30 THEN 'HTTP/3'
    END                                             AS http_version,
    c.captures,
    d.version                                       AS tls_version,
    d.cipher                                        AS tls_cipher,
    d.cert_not_before,
    d.cert_not_after,
    d.cert_issuer,
    d.cert_subject,
    d.cert_sans,
    c.cert_expires_soon,
    NULLIF(k.region, '')                            AS region,
    k.name                                          AS checker
FROM checks c
JOIN targets t ON t.id = c.target_id
LEFT JOIN tls_details d ON d.id = c.tls_id
LEFT JOIN checkers k ON k.id = c.checker_id;
