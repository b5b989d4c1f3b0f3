//! Criterion micro-benchmarks of the per-check hot paths: encoding and decoding a result, the
//! regex transform, a user's own transform (`examples/custom_stage.rs`, the README's stage),
//! and the executor's cost per event. Run: `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pipe::compiler::{CompiledPipeline, CompiledStage};
use pipe::monitor::check::{check_id, CheckResult, LatencyClass, Timings, TlsInfo, SCHEMA_VERSION};
use pipe::registry::BuiltStage;
use pipe::stage::StageKind;
use pipe::stages::transforms::regex_match::RegexMatchConfig;
use pipe::topology::{self, RunOptions};
use pipe::{
    AckStatus, BoxError, BuildContext, Event, Input, Sink, SinkContext, Source, SourceContext,
    StageConfig, Transform,
};

/// The README's example stage, as a user writes it.
#[allow(dead_code)]
#[path = "../examples/custom_stage.rs"]
mod custom_stage;

fn result() -> CheckResult {
    let scheduled_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    CheckResult {
        schema_version: SCHEMA_VERSION,
        check_id: check_id("https://www.example.com/", scheduled_at),
        target: "https://www.example.com/".into(),
        url: "https://www.example.com/".into(),
        method: "GET".into(),
        scheduled_at,
        started_at: scheduled_at + Duration::from_millis(3),
        response_time_ms: 182.417,
        timings_ms: Timings {
            dns: Some(12.05),
            connect: Some(24.1),
            tls: Some(51.3),
            first_byte: Some(88.2),
            transfer: Some(6.7),
        },
        status_code: Some(200),
        error: None,
        regex: Some("Example Domain".into()),
        regex_matched: Some(true),
        latency_class: Some(LatencyClass::Ok),
        up: true,
        body_bytes: Some(1256),
        remote_addr: Some("93.184.215.14:443".into()),
        http_version: Some("HTTP/2".into()),
        tls: None,
        region: None,
        checker: None,
        captures: None,
        probe_fault: false,
    }
}

/// The same check as an HTTPS check reports it with issue 14's fields: TLS details of a
/// typical public certificate, and the checker's identity.
fn result_with_tls() -> CheckResult {
    CheckResult {
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            cert_not_before: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            cert_not_after: UNIX_EPOCH + Duration::from_secs(1_802_776_000),
            cert_issuer: "CN=R11,O=Let's Encrypt,C=US".into(),
            cert_subject: "CN=www.example.com".into(),
            cert_sans: vec!["www.example.com".into(), "example.com".into()],
            cert_expires_soon: false,
        }),
        region: Some("eu-west".into()),
        checker: Some("checker-eu-west-1".into()),
        ..result()
    }
}

fn encoding(c: &mut Criterion) {
    // What the checker does per result: the typed event, encoded straight from the struct by
    // the kafka sink.
    let plain = result();
    c.bench_function("encode result (struct -> event -> JSON bytes)", |b| {
        b.iter(|| {
            black_box(
                Event::from_check(black_box(plain.clone()))
                    .to_json()
                    .unwrap(),
            )
        })
    });
    let detailed = result_with_tls();
    c.bench_function(
        "encode result with TLS details and checker identity (struct -> event -> JSON bytes)",
        |b| {
            b.iter(|| {
                black_box(
                    Event::from_check(black_box(detailed.clone()))
                        .to_json()
                        .unwrap(),
                )
            })
        },
    );
    // The path before events carried checks typed: through a map of fields. Kept to compare.
    c.bench_function(
        "encode result through event fields (struct -> fields -> JSON bytes)",
        |b| {
            b.iter(|| {
                let fields = black_box(plain.clone()).into_fields();
                black_box(serde_json::to_vec(&fields).unwrap())
            })
        },
    );
    c.bench_function(
        "encode result with TLS details through event fields (struct -> fields -> JSON bytes)",
        |b| {
            b.iter(|| {
                let fields = black_box(detailed.clone()).into_fields();
                black_box(serde_json::to_vec(&fields).unwrap())
            })
        },
    );
}

/// What the writer's `kafka` source does with each message of a checker: JSON bytes to the
/// typed check (`decode_payload`, `format: check_v1`, is this call and a version check).
fn decoding(c: &mut Criterion) {
    let plain = serde_json::to_vec(&result()).unwrap();
    c.bench_function("decode result (JSON bytes -> struct)", |b| {
        b.iter(|| black_box(serde_json::from_slice::<CheckResult>(black_box(&plain)).unwrap()))
    });
    let detailed = serde_json::to_vec(&result_with_tls()).unwrap();
    c.bench_function(
        "decode result with TLS details and checker identity (JSON bytes -> struct)",
        |b| {
            b.iter(|| {
                black_box(serde_json::from_slice::<CheckResult>(black_box(&detailed)).unwrap())
            })
        },
    );
}

fn regex(c: &mut Criterion) {
    let cx = BuildContext::new("body", ".", slog::Logger::root(slog::Discard, slog::o!()));
    let mut stage = RegexMatchConfig::default()
        .build(&cx)
        .unwrap_or_else(|_| panic!("build"));
    let mut page = "<p>lorem ipsum dolor sit amet</p>\n".repeat(500); // about 17 KiB
    page.push_str("<footer>Powered by Aiven</footer>");
    let body = Bytes::from(page);
    let fields = result().into_fields();
    let mut group = c.benchmark_group("regex_match");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("17 KiB page, match near the end", |b| {
        let mut out = Vec::with_capacity(1);
        b.iter(|| {
            let mut event = Event::new(fields.clone()).with_raw(body.clone());
            event.insert("regex", "Powered by (?P<vendor>\\w+)");
            stage.transform(event, &mut out).unwrap();
            black_box(out.pop())
        })
    });
    group.finish();
}

struct Emit(u64);

#[async_trait]
impl Source for Emit {
    async fn run(self: Box<Self>, mut cx: SourceContext) -> Result<(), BoxError> {
        let fields = result().into_fields();
        for _ in 0..self.0 {
            cx.out.send(Event::new(fields.clone())).await?;
        }
        Ok(())
    }
}

struct Pass;

impl Transform for Pass {
    fn transform(&mut self, event: Event, out: &mut Vec<Event>) -> Result<(), BoxError> {
        out.push(event);
        Ok(())
    }
}

struct Drain;

#[async_trait]
impl Sink for Drain {
    async fn run(self: Box<Self>, mut input: Input, _cx: SinkContext) -> Result<(), BoxError> {
        let mut batch = Vec::new();
        while input.recv_many(&mut batch, 256).await > 0 {
            for event in batch.drain(..) {
                event.finish(AckStatus::Delivered);
            }
        }
        Ok(())
    }
}

fn executor(c: &mut Criterion) {
    const EVENTS: u64 = 20_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stage = |id: &str, kind, inputs: &[&str], stage| CompiledStage {
        id: id.into(),
        type_name: "bench".into(),
        kind,
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        stage,
    };
    let mut group = c.benchmark_group("executor");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(20);
    group.bench_function("source -> 2 transforms -> sink, per event", |b| {
        b.iter(|| {
            let pipeline = CompiledPipeline {
                name: "bench".into(),
                stages: vec![
                    stage(
                        "src",
                        StageKind::Source,
                        &[],
                        BuiltStage::Source(Box::new(Emit(EVENTS))),
                    ),
                    stage(
                        "a",
                        StageKind::Transform,
                        &["src"],
                        BuiltStage::Transform(Box::new(Pass)),
                    ),
                    stage(
                        "b",
                        StageKind::Transform,
                        &["a"],
                        BuiltStage::Transform(Box::new(Pass)),
                    ),
                    stage(
                        "out",
                        StageKind::Sink,
                        &["b"],
                        BuiltStage::Sink(Box::new(Drain)),
                    ),
                ],
                warnings: Vec::new(),
                telemetry: pipe::telemetry::Telemetry::new(),
            };
            runtime
                .block_on(topology::run(
                    pipeline,
                    RunOptions::default(),
                    std::future::pending(),
                    slog::Logger::root(slog::Discard, slog::o!()),
                ))
                .unwrap();
        })
    });
    group.finish();
}

/// A user's stage on a check, then the check encoded as the `kafka` sink encodes it: on the
/// typed path (`check_mut`, what `examples/custom_stage.rs` does) and, for comparison, through
/// a field map (`fields_mut`, what it did before), which also loses the type for every stage
/// after it.
fn custom_stage(c: &mut Criterion) {
    let mut stage = pipe::testing::build::<custom_stage::UppercaseConfig>("fields: [target]")
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut group = c.benchmark_group("custom stage");
    group.throughput(Throughput::Elements(1));
    group.bench_function("uppercase a check, typed, then JSON", |b| {
        b.iter(|| {
            let out = pipe::testing::transform(&mut *stage, Event::from_check(result())).unwrap();
            black_box(out[0].to_json().unwrap())
        })
    });
    group.bench_function("uppercase a check through its fields, then JSON", |b| {
        b.iter(|| {
            let mut event = Event::from_check(result());
            if let Some(serde_json::Value::String(text)) = event.fields_mut().get_mut("target") {
                *text = text.to_uppercase();
            }
            black_box(event.to_json().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, encoding, decoding, regex, custom_stage, executor);
criterion_main!(benches);
