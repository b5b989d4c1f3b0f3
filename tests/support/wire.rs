//! A record batch no client library would write, sent with a hand-built Produce request: the
//! only way to put an unreadable batch on a broker on cue. Kafka's protocol guide gives the
//! layouts (Produce v3, RecordBatch v2); only what the tests need is here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as i16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A RecordBatch (magic 2) that claims `records` records compressed with gzip, but whose
/// payload is not gzip at all: a consumer cannot decompress it. The CRC is left at 0, which
/// consumers do not check unless `check.crcs` is on.
pub fn undecompressable_batch(records: i32) -> Vec<u8> {
    let mut after_length = Vec::new();
    after_length.extend_from_slice(&(-1_i32).to_be_bytes()); // partitionLeaderEpoch
    after_length.push(2); // magic
    after_length.extend_from_slice(&0_u32.to_be_bytes()); // crc
    after_length.extend_from_slice(&1_i16.to_be_bytes()); // attributes: gzip
    after_length.extend_from_slice(&(records - 1).to_be_bytes()); // lastOffsetDelta
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    after_length.extend_from_slice(&now.to_be_bytes()); // baseTimestamp
    after_length.extend_from_slice(&now.to_be_bytes()); // maxTimestamp
    after_length.extend_from_slice(&(-1_i64).to_be_bytes()); // producerId
    after_length.extend_from_slice(&(-1_i16).to_be_bytes()); // producerEpoch
    after_length.extend_from_slice(&(-1_i32).to_be_bytes()); // baseSequence
    after_length.extend_from_slice(&records.to_be_bytes()); // recordCount
    after_length.extend_from_slice(b"this is not a gzip stream, whatever the attributes say");
    let mut batch = Vec::new();
    batch.extend_from_slice(&0_i64.to_be_bytes()); // baseOffset (the broker assigns it)
    batch.extend_from_slice(&(after_length.len() as i32).to_be_bytes());
    batch.extend_from_slice(&after_length);
    batch
}

/// Sends `batch` to `topic`/`partition` on the broker at `address` (its leader) with acks=1,
/// and returns the error code of the partition's response (0: stored).
pub fn produce_batch(address: &str, topic: &str, partition: i32, batch: &[u8]) -> i16 {
    let mut body = Vec::new();
    body.extend_from_slice(&0_i16.to_be_bytes()); // api key: Produce
    body.extend_from_slice(&3_i16.to_be_bytes()); // api version
    body.extend_from_slice(&7_i32.to_be_bytes()); // correlation id
    string(&mut body, "pipe-tests");
    body.extend_from_slice(&(-1_i16).to_be_bytes()); // transactional id: null
    body.extend_from_slice(&1_i16.to_be_bytes()); // acks
    body.extend_from_slice(&10_000_i32.to_be_bytes()); // timeout ms
    body.extend_from_slice(&1_i32.to_be_bytes()); // one topic
    string(&mut body, topic);
    body.extend_from_slice(&1_i32.to_be_bytes()); // one partition
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    body.extend_from_slice(batch);

    let mut stream = TcpStream::connect(address).expect("connect to the broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&body).unwrap();
    let mut length = [0; 4];
    stream.read_exact(&mut length).expect("a Produce response");
    let mut response = vec![0; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut response).unwrap();
    // correlation id (4), topics (4), name (2 + len), partitions (4), index (4), error (2)
    let name_len = i16::from_be_bytes([response[8], response[9]]) as usize;
    let at = 10 + name_len + 4 + 4;
    i16::from_be_bytes([response[at], response[at + 1]])
}
