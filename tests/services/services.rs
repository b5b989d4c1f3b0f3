//! The local services that `scripts/test` starts are real and usable: a Kafka-protocol round
//! trip through the broker and a PostgreSQL round trip.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

#[tokio::test]
async fn kafka_produce_and_consume_in_a_group() {
    let topic = support::create_topic("services", 3).await;
    let brokers = support::kafka_brokers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let mut sent = BTreeSet::new();
    for i in 0..20 {
        let key = format!("key-{}", i % 5);
        let payload = format!("message {i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        sent.insert((key, payload));
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", support::unique_name("group"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = BTreeSet::new();
    let mut partition_of_key = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} messages consumed",
                    received.len(),
                    sent.len()
                )
            })
            .expect("consume");
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let payload = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
        let partition = *partition_of_key
            .entry(key.clone())
            .or_insert(message.partition());
        assert_eq!(partition, message.partition(), "one key, one partition");
        received.insert((key, payload));
    }
    assert_eq!(received, sent);
}

#[test]
fn postgres_write_and_read() {
    let database = support::create_database("services");
    let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, name text NOT NULL)")
        .unwrap();
    for (id, name) in [(1_i64, "one"), (2, "two")] {
        client
            .execute("INSERT INTO t (id, name) VALUES ($1, $2)", &[&id, &name])
            .unwrap();
    }
    let rows: Vec<(i64, String)> = client
        .query("SELECT id, name FROM t ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, [(1, "one".to_owned()), (2, "two".to_owned())]);
}
