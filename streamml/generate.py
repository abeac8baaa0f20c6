"""Write seeded signal-error streams, speed tests and outcomes to files (`streamml generate`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from streamml.console import Progress, human

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pyarrow as pa

    from streamml.onnx_models.speedtests import RequestGeneratorConfig
    from streamml.operators.sources import GeneratorConfig

__all__ = ["JUNK_LINES", "write_events", "write_outcomes", "write_speed_tests"]

JUNK_LINES: tuple[bytes, ...] = (
    b"",
    b"not json at all",
    b'["a", "list"]',
    b'{"account": "", "ts": 1}',
    b'{"account": 42, "ts": 1}',
    b'{"ts": 1767225600000}',
    b'{"account": "acct-x"}',
    b'{"account": "acct-x", "ts": -5}',
    b'{"account": "acct-x", "ts": 1.5}',
    b'{"account": "acct-x", "ts": "soon"}',
    b"\xff\xfe\x00binary\x80junk",
    b'{"account": "' + b"k" * 300 + b'", "ts": 1}',
)
_CODES = ("E101", "E204", "E305", "E999")


def _lines(accounts: pa.Array, ts: np.ndarray, codes: np.ndarray, fmt: str) -> bytes:
    import pyarrow as pa
    import pyarrow.compute as pc

    acc = accounts.cast(pa.string())
    ts_s = pa.array(ts).cast(pa.string())
    code = pa.array(codes)
    if fmt == "csv":
        joined = pc.binary_join_element_wise(acc, ts_s, code, ",")
    else:
        joined = pc.binary_join_element_wise(
            '{"account": "', acc, '", "ts": ', ts_s, ', "code": "', code, '"}', ""
        )
    return ("\n".join(joined.to_pylist()) + "\n").encode() if len(joined) else b""


def _with_junk(data: bytes, junk_rate: float, rng) -> bytes:
    """Return `data` (whole lines) with a fraction `junk_rate` of malformed lines mixed in."""
    if junk_rate <= 0:
        return data
    lines = data.split(b"\n")[:-1]
    n_junk = rng.binomial(len(lines), junk_rate)
    for _ in range(n_junk):
        at = int(rng.integers(0, len(lines) + 1))
        lines.insert(at, JUNK_LINES[int(rng.integers(0, len(JUNK_LINES)))])
    return b"\n".join(lines) + b"\n"


def write_events(
    path: Path,
    config: GeneratorConfig,
    *,
    fmt: str = "csv",
    files: int = 1,
    junk_rate: float = 0.0,
    progress: Progress | None = None,
    by_key: bool = False,
) -> list[Path]:
    """Write the generated stream; with `files` > 1, each file holds its own set of accounts.

    Batches of the generator partitions are interleaved in each file, so event time advances
    through the file. A fraction `junk_rate` of extra malformed lines is mixed in. With
    `by_key`, file i holds the accounts Kafka's default key partitioner puts in partition i of
    `files` (``murmur2(account) mod files``), as a topic keyed by account would: the input
    that ``--routing partition`` reads without any exchange.
    """
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    parts = max(config.partitions, files)
    config = replace(config, partitions=parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    if files == 1:
        paths = [path]
    else:
        paths = [path.with_name(f"{path.stem}-{i:02d}{path.suffix}") for i in range(files)]
    handles = [open(p, "wb") for p in paths]  # noqa: SIM115
    import numpy as np
    import pyarrow as pa

    from streamml.operators.sources import generate_events, partition_sizes
    from streamml.state.sharding import murmur2_many

    code_names = np.array(_CODES)
    rng = np.random.default_rng([config.seed, 0x1A4C])
    sizes = partition_sizes(config)
    step = max(1_000, min(config.batch_size, config.events // (parts * 20) or 1))
    written = 0
    try:
        if fmt == "csv":
            for h in handles:
                h.write(b"account,ts,code\n")
        pos = [0] * parts
        while any(pos[i] < sizes[i] for i in range(parts)):
            for i in range(parts):
                if pos[i] >= sizes[i]:
                    continue
                ev = generate_events(config, i, pos[i], step)
                pos[i] += len(ev.ts)
                codes = code_names[rng.integers(0, len(code_names), len(ev.ts))]
                if by_key and files > 1:
                    target = (murmur2_many(ev.accounts) % np.uint64(files)).astype(np.int64)
                    pieces = [
                        (f, np.flatnonzero(target == f))
                        for f in range(files)
                        if (target == f).any()
                    ]
                else:
                    pieces = [(i % files, None)]
                for f, rows in pieces:
                    if rows is None:
                        data = _lines(ev.accounts, ev.ts, codes, fmt)
                    else:
                        picked = ev.accounts.take(pa.array(rows))
                        data = _lines(picked, ev.ts[rows], codes[rows], fmt)
                    handles[f].write(_with_junk(data, junk_rate, rng))
                written += len(ev.ts)
                if progress is not None:
                    progress.update(f"generated {human(written)} / {human(config.events)} events")
    finally:
        for h in handles:
            h.close()
        if progress is not None:
            progress.done()
    return paths


def write_speed_tests(path: Path, config: GeneratorConfig) -> Path:
    """Write generated speed tests (see `generate_speed_tests`) as JSON lines; return the path."""
    import orjson
    import pyarrow as pa

    from streamml.operators.sources import generate_speed_tests

    accounts, ts, fields = generate_speed_tests(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"account": accounts.cast(pa.string()), "ts": ts, **fields})
    with open(path, "wb") as f:
        for batch in table.to_batches(max_chunksize=100_000):
            for row in batch.to_pylist():
                f.write(orjson.dumps(row) + b"\n")
    return path


def write_outcomes(
    path: Path, requests: RequestGeneratorConfig, missing_rate: float, seed: int
) -> Path:
    """Write the outcomes of generated requests (`generate_outcomes`) as JSON lines."""
    import orjson

    from streamml.onnx_models.speedtests import OutcomeConfig, generate_outcomes

    outcomes = generate_outcomes(requests, OutcomeConfig(missing_rate=missing_rate, seed=seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.writelines(orjson.dumps(o) + b"\n" for o in outcomes)
    return path
