"""Produce messages with kafka-python, a Kafka client that is not librdkafka.

Used by tests/kafka_delivery.rs to show that the writer reads what other clients write, in every
codec. Reads `key<TAB>value` lines from standard input and sends each as one message, batched
(linger), compressed with the codec named, to one partition, waiting for every acknowledgement.

    python kafka_python_produce.py BROKERS TOPIC PARTITION CODEC < messages.tsv
"""

import sys

from kafka import KafkaProducer


def main():
    brokers, topic, partition, codec = sys.argv[1:5]
    producer = KafkaProducer(
        bootstrap_servers=brokers.split(","),
        compression_type=None if codec == "none" else codec,
        acks="all",
        linger_ms=50,
        batch_size=256 * 1024,
    )
    sends = []
    for line in sys.stdin.buffer:
        key, _, value = line.rstrip(b"\n").partition(b"\t")
        sends.append(producer.send(topic, key=key, value=value, partition=int(partition)))
    for send in sends:
        send.get(timeout=30)
    producer.flush()
    producer.close()
    print(f"{len(sends)} messages with {codec} by kafka-python {__import__('kafka').__version__}")


if __name__ == "__main__":
    main()
