"""The Kafka flow's memory stays flat while it reads: a small soak on the real broker."""

from streamml.benchmarks.kafka_soak import fill_topic, soak_flow

MiB = 1 << 20
RECORDS = 300_000


def test_flow_rss_stays_flat_while_reading(kafka_broker, make_topic, tmp_path):
    topic = make_topic(3)
    fill_topic(
        kafka_broker, topic, RECORDS, accounts=20_000, partitions=3, processes=1, chunk=RECORDS
    )
    marks = [100_000, 200_000, RECORDS]
    # A small RocksDB budget is full before the first mark. Unbounded (as before the budget),
    # the memtables and caches of the 16 shards took about 125 bytes more per record read.
    result = soak_flow(
        kafka_broker, topic, RECORDS, tmp_path, marks=marks, window=50_000, state_memory_mb=16
    )
    assert result.counters["accepted"] == RECORDS
    assert sorted(result.marks) == marks
    rss = [result.marks[m] / MiB for m in marks]
    assert max(rss) - rss[0] < 12, rss
