//! `http_probe`: checks websites over HTTP(S) on a schedule; every check becomes one event.
//!
//! Each check is a real request through libcurl ([`crate::monitor::libcurl`]), by default on a fresh
//! connection, with no DNS cache and a full TLS handshake, so the DNS, connect and TLS phases
//! are measured for real. Whatever happens on
//! the network (a timeout, a DNS failure, a refused connection, a bad certificate) the check
//! yields a result in message schema v1 ([`crate::monitor::check::CheckResult`]): failures are data, not
//! log lines. Bodies are read up to `max_body_bytes` and kept (as the event's raw bytes, never
//! a field) only when a regex needs them; `regex_match` consumes them.
//!
//! Scheduling is slot-based ([`crate::monitor::schedule`]). Typed failure reasons, per-phase timings and
//! slots follow getsentry/uptime-checker; the code is ours.

mod canary;
mod config;
mod fleet;
mod metrics;
mod probe;
mod target;

pub use config::{
    CertExpiryDown, HttpProbeConfig, IpVersionSetting, StatusItem, StatusSet, TargetConfig,
    DEFAULT_USER_AGENT, MAX_REDIRECTS,
};

#[cfg(test)]
mod tests {
    use super::config::*;
    use crate::config::diagnostic::ConfigError;
    use crate::registry::{BuildContext, StageConfig};
    use crate::stage::Source;
    use slog::o;

    fn build(yaml: &str) -> Result<Box<dyn Source>, Vec<ConfigError>> {
        let cx = BuildContext::new("probe", ".", slog::Logger::root(slog::Discard, o!()));
        serde_norway::from_str::<HttpProbeConfig>(yaml)
            .unwrap()
            .build(&cx)
    }

    fn messages(yaml: &str) -> Vec<(Option<String>, String)> {
        build(yaml)
            .err()
            .expect("errors")
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn status_sets_take_codes_and_ranges() {
        let set = StatusSet::parse(&[StatusItem::Code(204), StatusItem::Range("300-302".into())])
            .unwrap();
        assert!(set.contains(204) && set.contains(301) && !set.contains(200));
        assert!(StatusSet::parse(&[StatusItem::Range("2xx".into())]).is_err());
        assert!(StatusSet::parse(&[StatusItem::Code(999)]).is_err());
        assert!(StatusSet::parse(&[]).is_err());
    }

    #[test]
    fn bad_targets_are_named_in_their_errors() {
        let errors = messages(
            "targets:\n  - url: ftp://example.com\n  - name: broken\n    url: https://example.com\n    regex: '('\n  - url: https://a.example\n    name: twice\n  - url: https://b.example\n    name: twice\n  - url: 'not a url'\n",
        );
        assert_eq!(errors[0].0.as_deref(), Some("targets[0].url"));
        assert_eq!(
            errors[0].1,
            "targets[0]: target `ftp://example.com`: unsupported scheme `ftp` in the URL; use http or https"
        );
        assert_eq!(errors[1].0.as_deref(), Some("targets[1].regex"));
        assert!(
            errors[1]
                .1
                .starts_with("targets[1]: target `broken`: invalid regex:"),
            "{}",
            errors[1].1
        );
        assert_eq!(errors[2].0.as_deref(), Some("targets[3].name"));
        assert_eq!(
            errors[2].1,
            "targets[3]: duplicate target name `twice`; names must be unique (set `name:`)"
        );
        assert_eq!(errors[3].0.as_deref(), Some("targets[4].url"));
        assert_eq!(
            errors.len(),
            4 + usize::from(errors.len() > 4),
            "{errors:?}"
        );
    }

    #[test]
    fn no_targets_is_an_error() {
        assert_eq!(
            messages("interval: 5s\n"),
            [(
                None,
                "no targets: list them under `targets:`, in a `targets_file` or in a `targets_topic`".to_owned()
            )]
        );
    }

    #[test]
    fn targets_topic_settings_are_checked_where_they_are() {
        // A fleet checker needs no other targets; its settings are checked up front.
        assert!(build("targets_topic:\n  brokers: 127.0.0.1:9092\n  fleet: eu\n").is_ok());
        let errors = messages(
            "targets_topic:\n  brokers: 127.0.0.1:9092\n  fleet: ' '\n  results_topic: checks\n  handover_lookback: 5s\n  handover_catch_up: 10s\n  timeout: 0s\n",
        );
        assert_eq!(
            errors,
            [
                (
                    Some("targets_topic.fleet".to_owned()),
                    "`fleet` is empty".to_owned()
                ),
                (
                    Some("targets_topic.handover_catch_up".to_owned()),
                    "the hand-over catch-up cannot reach further back than `handover_lookback`"
                        .to_owned()
                ),
                (
                    Some("targets_topic.timeout".to_owned()),
                    "the timeout must be longer than 0".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn the_session_timeout_is_the_groups() {
        let topic = |yaml: &str| {
            serde_norway::from_str::<TargetsTopicConfig>(&format!(
                "brokers: 127.0.0.1:9092\nfleet: eu\n{yaml}"
            ))
            .unwrap()
        };
        let seconds = |yaml: &str| super::target::session_timeout(&topic(yaml)).as_secs();
        assert_eq!(seconds(""), 45, "librdkafka's default");
        assert_eq!(seconds("options: { session.timeout.ms: 6000 }\n"), 6);
        assert_eq!(seconds("options: { session.timeout.ms: '10000' }\n"), 10);
        // KIP-848: the broker's group.consumer.session.timeout.ms, 45 s by default.
        assert_eq!(
            seconds("group_protocol: consumer\noptions: { session.timeout.ms: 6000 }\n"),
            45
        );
    }

    #[test]
    fn targets_file_is_read_relative_to_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("targets.yaml"),
            "- url: https://example.com\n- url: https://example.org\n  interval: 10s\n",
        )
        .unwrap();
        let cx = BuildContext::new(
            "probe",
            dir.path().to_path_buf(),
            slog::Logger::root(slog::Discard, o!()),
        );
        let config: HttpProbeConfig = serde_norway::from_str("targets_file: targets.yaml").unwrap();
        assert!(config.build(&cx).is_ok());

        std::fs::write(
            dir.path().join("bad.yaml"),
            "- url: https://example.com\n- nme: x\n",
        )
        .unwrap();
        let config: HttpProbeConfig = serde_norway::from_str("targets_file: bad.yaml").unwrap();
        let errors = config.build(&cx).err().unwrap();
        assert_eq!(errors[0].field.as_deref(), Some("targets_file"));
        assert!(
            errors[0].message.starts_with(
                "targets_file `bad.yaml`: line 2 column 3: [1].nme: unknown field `nme`"
            ),
            "{}",
            errors[0].message
        );

        // ${VAR}s are interpolated as in pipeline files.
        std::env::set_var("PIPE_TEST_TARGET_HOST", "example.net");
        std::fs::write(
            dir.path().join("env.yaml"),
            "- url: https://${PIPE_TEST_TARGET_HOST}/\n- url: ${PIPE_TEST_UNSET_VAR}\n",
        )
        .unwrap();
        let config: HttpProbeConfig = serde_norway::from_str("targets_file: env.yaml").unwrap();
        let errors = config.build(&cx).err().unwrap();
        assert_eq!(
            errors[0].message,
            "targets_file `env.yaml`: line 2 column 3: [1].url: environment variable `PIPE_TEST_UNSET_VAR` is not set and has no default (write `${PIPE_TEST_UNSET_VAR:-default}`)"
        );
    }

    #[test]
    fn probe_settings_are_checked_without_echoing_proxy_passwords() {
        let errors = messages(
            "region: ''\ntargets:\n  - url: https://a.example\n    proxy: 'ftp://u:hunter22@proxy.example'\n  - url: https://b.example\n    proxy: 'http://proxy.example:3128'\n    deny_private_addresses: true\n  - url: https://c.example\n    tls_ca_file: /nonexistent/ca.pem\n",
        );
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_deref()).collect();
        assert_eq!(
            fields,
            [
                Some("region"),
                Some("targets[0].proxy"),
                Some("targets[1].deny_private_addresses"),
                Some("targets[2].tls_ca_file")
            ],
            "{errors:?}"
        );
        assert!(
            errors[1].1.contains("unsupported proxy scheme `ftp`"),
            "{}",
            errors[1].1
        );
        assert!(
            errors.iter().all(|(_, m)| !m.contains("hunter22")),
            "{errors:?}"
        );
        assert!(errors[3].1.contains("cannot read it"), "{}", errors[3].1);
        let bad_family =
            serde_norway::from_str::<HttpProbeConfig>("ip_version: 5\ntargets: []\n").unwrap_err();
        assert!(
            bad_family.to_string().contains("use any, 4 or 6"),
            "{bad_family}"
        );
    }

    #[test]
    fn header_values_are_not_echoed() {
        let errors = messages("targets:\n  - url: https://example.com\n    headers: { Authorization: \"Bearer abc\\ndef\" }\n");
        assert_eq!(errors[0].0.as_deref(), Some("targets[0].headers"));
        assert!(!errors[0].1.contains("abc"), "{}", errors[0].1);
    }
}
