import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamml.broker import free_port
from tests.conftest import create_topic

ROOT = Path(__file__).resolve().parents[2]


def test_broker_command_serves_kafka_and_stops_on_ctrl_c():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamml.cli", "broker", "--port", str(port)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        bootstrap = f"127.0.0.1:{port}"
        deadline = time.time() + 30
        out = ""
        while bootstrap not in out and time.time() < deadline:
            out += proc.stdout.readline()
        assert bootstrap in out
        create_topic(bootstrap, "cli-check", 1)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send("cli-check", b"hello").get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        consumer.assign([TopicPartition("cli-check", 0)])
        consumer.seek_to_beginning()
        records = consumer.poll(timeout_ms=5000)
        consumer.close()
        assert [r.value for rs in records.values() for r in rs] == [b"hello"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
