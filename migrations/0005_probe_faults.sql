-- Probe faults: checks that failed without a response while none of the checker's canaries
-- answered either (`canary:` of http_probe). The checker's own network was down, not, as far
-- as it can tell, the target: such a check is stored (it happened, and says where the fault
-- was) but counts neither up nor down. Incidents skip it, and rollups count it apart, in
-- `probe_faults`, outside `checks`, `up_checks` and the down_* columns.
--
-- True or null: a null costs nothing in a row that already has nullable columns, and checks
-- without a probe fault are nearly all of them. Adding a column without a default rewrites
-- nothing, however many checks are stored.
ALTER TABLE checks ADD COLUMN probe_fault boolean CHECK (probe_fault);

ALTER TABLE rollups_hourly ADD COLUMN probe_faults integer NOT NULL DEFAULT 0;
ALTER TABLE rollups_daily ADD COLUMN probe_faults integer NOT NULL DEFAULT 0;

-- The query surface gains the column, after all the others (so that queries by position
-- still read what they read).
CREATE OR REPLACE VIEW check_results AS
SELECT
    coalesce(c.check_id, pipe_check_id(t.name, c.checked_at, r.name)) AS check_id,
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
    NULLIF(r.name, '')                              AS region,
    k.name                                          AS checker,
    coalesce(c.probe_fault, false)                  AS probe_fault
FROM checks c
JOIN targets t ON t.id = c.target_id
JOIN regions r ON r.id = c.region_id
LEFT JOIN tls_details d ON d.id = c.tls_id
LEFT JOIN checkers k ON k.id = c.checker_id;
