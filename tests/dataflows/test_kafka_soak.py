"""The Kafka flow's memory stays flat while it reads: a small soak on the real broker."""

from streamml.benchmarks.kafka_soak import fill_topic, soak_flow

MiB = 1 << 20
RECORDS = 900_000
SETTLED = RECORDS // 3
"""Records read before the memory budget is full: the RSS is held flat from there on."""


def test_flow_rss_stays_flat_while_reading(kafka_broker, make_topic, tmp_path):
    topic = make_topic(3)
    # 20,000 accounts: every one is seen long before SETTLED, so from there on the state does
    # not grow, and neither may the process (RocksDB stays within a 16 MiB budget).
    fill_topic(
        kafka_broker, topic, RECORDS, accounts=20_000, partitions=3, processes=1, chunk=RECORDS
    )
    marks = [SETTLED, 2 * SETTLED, RECORDS]
    result = soak_flow(
        kafka_broker, topic, RECORDS, tmp_path, marks=marks, window=50_000, state_memory_mb=16
    )
    assert result.counters["accepted"] == RECORDS
    assert sorted(result.marks) == marks
    rss = [round(result.marks[m] / MiB) for m in marks]
    # Single samples jump by tens of MiB (fetches of megabytes come and go): the slope fitted
    # over every sample after SETTLED must stay well below the 60-90 bytes per record the
    # process grew by when each shard kept a block cache of its own outside the budget.
    slope = result.bytes_per_record(SETTLED)
    assert slope < 30, (slope, rss)
