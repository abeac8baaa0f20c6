"""The sparse value codec: every record round-trips bit for bit, whatever its dtype and content."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.state.definitions import default_definitions, parse_definitions
from streamml.state.feature_records import RecordLayout
from streamml.state.rolling_store import empty_records, record_dtype
from streamml.state.value_codec import SparseCodec, word_dtype

from tests.operators.test_aggregations import DEFS


def _templates() -> list[np.ndarray]:
    """Templates of the real records: the count record, and every source's feature record."""
    out = [empty_records(1, w) for w in (1, 2, 3, 24, 31, 32, 33, 168)]
    for defs in (default_definitions(), parse_definitions(DEFS)):
        by_source: dict[str, list] = {}
        for f in defs.features.values():
            by_source.setdefault(f.source.name, []).append(f)
        for feats in by_source.values():
            out.append(RecordLayout(tuple(feats)).empty(1))
            for f in feats:
                out.append(RecordLayout((f,)).empty(1))
    return out


TEMPLATES = _templates()
ODD = [np.zeros(1, dtype=np.dtype([("a", "<u2", (n,))])) for n in (1, 3, 17)] + [
    np.zeros(1, dtype=np.dtype([("a", "u1", (n,))])) for n in (1, 5, 9, 64)
]


@st.composite
def records(draw, templates=TEMPLATES + ODD):
    template = draw(st.sampled_from(templates))
    n = draw(st.integers(0, 40))
    size = template.dtype.itemsize
    mode = draw(st.sampled_from(["template", "zero", "ones", "sparse", "dense"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "template":
        rec = np.repeat(template, n)
    elif mode == "zero":
        rec = np.zeros(n, dtype=template.dtype)
    elif mode == "ones":
        rec = np.frombuffer(b"\xff" * (size * n), dtype=template.dtype).copy()
    else:
        raw = rng.integers(0, 256, size * n, dtype=np.uint8)
        if mode == "sparse":
            raw[rng.random(size * n) < 0.9] = 0
        rec = raw.view(template.dtype).copy()
        # Some records as the flow writes them: empty ones with a few fields set.
        k = rng.integers(0, n + 1)
        if k:
            base = np.repeat(template, k)
            for name in template.dtype.names:
                if rng.random() < 0.5:
                    base[name] = rec[:k][name]
            rec[:k] = base
    return template, rec


@settings(max_examples=400, deadline=None)
@given(records())
def test_every_record_round_trips(case):
    template, rec = case
    for codec in (SparseCodec(rec.dtype, template), SparseCodec(rec.dtype)):
        buf, ends = codec.encode(rec)
        assert len(ends) == len(rec)
        values = codec.encode_list(rec)
        assert b"".join(values) == buf
        assert codec.decode(values).tobytes() == rec.tobytes()
        # Missing values leave the given records as they are.
        raw = [v if i % 3 else None for i, v in enumerate(values)]
        out = codec.fill(np.repeat(template, len(rec)), raw)
        expected = rec.copy()
        expected[::3] = template[0]
        assert out.tobytes() == expected.tobytes()


def test_extreme_values_round_trip():
    rec = empty_records(6, 24)
    rec["max_bucket"] = [-(2**63), 2**63 - 1, 0, -1, 1, 2**32]
    rec["updated_at"] = [2**63 - 1, -(2**63), -1, 0, 2**31, 1]
    rec["flags"] = [0, 2**32 - 1, 1, 0, 0, 0]
    rec["counts"][1] = 2**32 - 1
    rec["counts"][2, ::2] = 7
    codec = SparseCodec(rec.dtype, empty_records(1, 24))
    assert codec.decode(codec.encode_list(rec)).tobytes() == rec.tobytes()
    layout = RecordLayout(tuple(parse_definitions(DEFS).features.values()))
    frec = layout.empty(4)
    for name in layout.dtype.names:
        if name.startswith("v"):
            frec[name][0] = np.nan
            frec[name][1] = -0.0
            frec[name][2] = np.frombuffer(np.uint64(0x7FF8_0000_DEAD_BEEF).tobytes(), "<f8")[0]
            frec[name][3] = -np.inf
    codec = SparseCodec(layout.dtype, layout.empty(1))
    assert codec.decode(codec.encode_list(frec)).tobytes() == frec.tobytes()


def test_sparse_count_record_is_small():
    rec = empty_records(3, 24)
    rec["max_bucket"] = 490_000
    rec["updated_at"] = 1_764_000_000_000
    rec["counts"][:, 0] = 1
    rec["counts"][1, 5] = 2
    codec = SparseCodec(rec.dtype, empty_records(1, 24))
    sizes = [len(v) for v in codec.encode_list(rec)]
    assert record_dtype(24).itemsize == 116
    # bitmap 4 | max_bucket's low word 4 | updated_at 8 | one or two counts 4 each
    assert sizes == [20, 24, 20]
    # An entity never seen is its bitmap alone, for every real record (empty buckets of minima,
    # maxima and last values are not zero in the template, and cost nothing either).
    for template in TEMPLATES:
        c = SparseCodec(template.dtype, template)
        arrays = np.zeros(1, dtype=template.dtype)
        for name in template.dtype.names:
            if not template.dtype.fields[name][0].shape:
                arrays[name] = template[name]
        scalars = int(np.count_nonzero(arrays.view(c.word)))
        assert len(c.encode_list(template)[0]) == (c.bitmap_words + scalars) * 4


def test_word_size_follows_the_record_size():
    assert word_dtype(116) == np.dtype("<u4")
    assert word_dtype(6) == np.dtype("<u2")
    assert word_dtype(7) == np.dtype("u1")


def test_values_of_another_format_are_refused():
    rec = empty_records(2, 24)
    rec["max_bucket"] = 490_000
    rec["updated_at"] = 1_764_000_000_000
    rec["counts"][:, 0] = 1
    codec = SparseCodec(rec.dtype, empty_records(1, 24))
    raw = [rec[i : i + 1].tobytes() for i in range(2)]
    with pytest.raises(ValueError, match="not a value of this codec"):
        codec.decode(raw)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        codec.decode([b"\x01\x00\x00\x00\x05"])
    with pytest.raises(ValueError, match="template dtype"):
        SparseCodec(rec.dtype, np.zeros(1, dtype=record_dtype(3)))
