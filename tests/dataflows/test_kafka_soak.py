"""The Kafka flow's memory stays flat while it reads: a small soak on the real broker."""

import pytest
from streamml.benchmarks.kafka_soak import fill_topic, soak_flow

MiB = 1 << 20
RECORDS = 300_000


@pytest.mark.xfail(
    reason="open (issue 12): with a 16 MiB RocksDB budget the heap still grows 12-26 MiB over "
    "300k records in some runs (MultiGet data blocks beyond the cache's accounting); the "
    "growth is reported, not yet bounded",
    strict=False,
)
def test_flow_rss_stays_flat_while_reading(kafka_broker, make_topic, tmp_path):
    topic = make_topic(3)
    # 20,000 accounts: all of them are seen by the first mark, so from there on the state does
    # not grow, and neither may the process (RocksDB stays within a small budget).
    fill_topic(
        kafka_broker, topic, RECORDS, accounts=20_000, partitions=3, processes=1, chunk=RECORDS
    )
    marks = [100_000, 200_000, RECORDS]
    result = soak_flow(
        kafka_broker, topic, RECORDS, tmp_path, marks=marks, window=50_000, state_memory_mb=16
    )
    assert result.counters["accepted"] == RECORDS
    assert sorted(result.marks) == marks
    rss = [result.marks[m] / MiB for m in marks]
    # one sample is noisy (fetches of megabytes come and go): the medians must not creep up; a
    # leak of 60 bytes per record read would add 12 MiB between the first and the last mark
    assert rss[-1] - rss[0] < 12, rss
