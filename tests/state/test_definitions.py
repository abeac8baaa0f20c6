"""Feature definition files: parsing, validation errors and versions."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamml.state.definitions import (
    DefinitionError,
    default_definitions,
    format_duration,
    load_definitions,
    parse_definitions,
    parse_duration,
)

BASE = """
[entities.account]

[sources.tests]
kind = "kafka"
entity = "account"
key = "account"
time = "ts"
fields = { ratio = "number", band = "string" }

[features.ratio_mean_7d]
source = "tests"
aggregation = "mean"
field = "ratio"
bucket = "1d"
window = "7d"
ttl = "1h"
"""


def test_bundled_definitions_hold_the_error_count_and_speed_tests():
    d = default_definitions()
    f = d.feature("signal_errors_24h")
    assert (f.aggregation, f.bucket_ms, f.window_buckets, f.alert_above) == (
        "count",
        3_600_000,
        24,
        2000,
    )
    speed = d.of_source("speed_tests")
    assert len(speed) >= 5
    assert {x.aggregation for x in speed} >= {"count", "mean", "min", "max", "last"}


def test_version_ignores_formatting_ttl_and_stores_but_not_the_values():
    base = parse_definitions(BASE).feature("ratio_mean_7d").version
    reformatted = BASE.replace('bucket = "1d"', 'bucket    =   "24h"  # one day').replace(
        'ttl = "1h"', 'ttl = "60m"\nonline = ["postgres", "rocksdb"]'
    )
    assert parse_definitions(reformatted).feature("ratio_mean_7d").version == base
    for old, new in [
        ('window = "7d"', 'window = "14d"'),
        ('aggregation = "mean"', 'aggregation = "sum"'),
        ('bucket = "1d"', 'bucket = "12h"'),
        ('time = "ts"', 'time = "event_time"'),
    ]:
        assert parse_definitions(BASE.replace(old, new)).feature("ratio_mean_7d").version != base


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('aggregation = "mean"', 'aggregation = "median"', r"aggregation: expected one of count"),
        ('window = "7d"', 'window = "36h"', r"window: expected a multiple of the bucket \(1d\)"),
        ('field = "ratio"', 'field = "speed"', r"field: source 'tests' has no field 'speed'"),
        ('field = "ratio"', 'field = "band"', r"'band' is a string field"),
        ('ttl = "1h"', 'ttl = "0s"', r"ttl: expected a duration above 0"),
        ('ttl = "1h"', "ttl = 3600", r"ttl: expected a duration such as"),
        ('ttl = "1h"', 'ttl = "1h"\nwindwo = "7d"', r"features.ratio_mean_7d.windwo: unknown key"),
        ('source = "tests"', 'source = "nope"', r"unknown source 'nope'"),
        ('entity = "account"', 'entity = "line"', r"unknown entity 'line'"),
        ('kind = "kafka"', 'kind = "mqtt"', r"sources.tests.kind: expected one of file"),
        ('bucket = "1d"', 'bucket = "1m"', r"window: spans 10080 buckets; at most 4096"),
    ],
)
def test_bad_definitions_are_refused_naming_file_key_and_line(old, new, message):
    text = BASE.replace(old, new)
    with pytest.raises(DefinitionError) as info:
        parse_definitions(text, "defs.toml")
    text_msg = str(info.value)
    assert text_msg.startswith("defs.toml"), text_msg
    assert re.search(message, text_msg), text_msg
    assert re.match(r"defs\.toml:\d+: ", text_msg), text_msg


def test_duplicate_feature_is_refused_with_its_line(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text(BASE + BASE[BASE.index("[features.") :])
    with pytest.raises(DefinitionError, match=r"f\.toml: not valid TOML: .*line \d+"):
        load_definitions(path)


def test_line_points_at_the_offending_key():
    text = BASE.replace('window = "7d"', 'window = "36h"')
    with pytest.raises(DefinitionError) as info:
        parse_definitions(text, "d.toml")
    line = int(str(info.value).split(":")[1])
    assert text.splitlines()[line - 1].startswith("window")


def test_count_takes_no_field_and_others_need_one():
    with pytest.raises(DefinitionError, match="takes no field"):
        parse_definitions(BASE.replace('aggregation = "mean"', 'aggregation = "count"'))
    with pytest.raises(DefinitionError, match="needs the numeric field"):
        parse_definitions(BASE.replace('field = "ratio"\n', ""))


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(DefinitionError, match="cannot read"):
        load_definitions(tmp_path / "missing.toml")


@given(st.integers(1, 10**12))
def test_durations_round_trip(ms):
    assert parse_duration(format_duration(ms)) == ms
