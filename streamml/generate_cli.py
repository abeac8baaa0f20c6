"""`streamml generate`: write a seeded signal-error stream to CSV or JSON lines files."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from streamml.console import Progress, human
from streamml.state.definitions import parse_instant

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from streamml.onnx_models.speedtests import RequestGeneratorConfig
    from streamml.operators.sources import GeneratorConfig

__all__ = ["JUNK_LINES", "register", "write_events"]

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


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml generate`."""
    p = sub.add_parser(
        "generate",
        help="write a seeded signal-error stream to files",
        description=(
            "Write generated signal-error events (heavy-tailed accounts, bursts above the alert "
            "threshold, out-of-order and late events) as CSV or JSON lines. Event times span "
            "--span-hours ending by --end (default: now, so `features get` reads live values); "
            "the same seed and --end give the same file."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output file (.csv or .jsonl)")
    p.add_argument(
        "--kind",
        choices=["signal-errors", "speed-tests", "outcomes"],
        default="signal-errors",
        help="signal-error events; speed tests (JSON lines with download_ratio, upload_ratio, "
        "latency_ms, packet_loss_pct: the bundled speed_tests source); or the outcomes of the "
        "requests `run predict --requests-source generate` draws with the same --events "
        "(requests), --accounts, --seed and --end (its --now), observed minutes to days later",
    )
    p.add_argument(
        "--missing-rate", type=float, default=0.1, help="outcomes: share of requests with none"
    )
    p.add_argument("--outcome-seed", type=int, default=1, help="outcomes: seed of the delays")
    p.add_argument("--drift-at", help="outcomes: the requests' --drift-at (epoch ms or ISO-8601)")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--format", choices=["csv", "jsonl"], help="default: from --out's extension")
    p.add_argument(
        "--files", type=int, default=1, help="split into this many files, each with its accounts"
    )
    p.add_argument(
        "--by-key",
        action="store_true",
        help="with --files N: file i holds the accounts Kafka's default key partitioner puts in "
        "partition i of N (murmur2), the input `run error-count --routing partition` reads with "
        "no exchange between processes",
    )
    p.add_argument("--junk-rate", type=float, default=0.0, help="fraction of malformed lines")
    p.add_argument(
        "--end",
        help="end of the event times: epoch ms or ISO-8601 with an offset (default: now)",
    )
    p.add_argument("--span-hours", type=float, default=72.0, help="hours the event times span")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from streamml.onnx_models.speedtests import RequestGeneratorConfig
    from streamml.operators.sources import GeneratorConfig

    if args.events < 0 or args.accounts < 1 or not 0 <= args.junk_rate < 1:
        print(
            "streamml generate: need --events >= 0, --accounts >= 1, 0 <= --junk-rate < 1",
            file=sys.stderr,
        )
        return 2
    if args.span_hours <= 0:
        print("streamml generate: --span-hours must be above 0", file=sys.stderr)
        return 2
    try:
        end = int(time.time() * 1000) if args.end is None else parse_instant(args.end)
    except ValueError as exc:
        print(f"streamml generate: --end: {exc}", file=sys.stderr)
        return 2
    span = round(args.span_hours * 3_600_000)
    if end < span:
        print("streamml generate: --end is less than --span-hours after 1970", file=sys.stderr)
        return 2
    fmt = args.format or ("csv" if args.out.suffix.lower() == ".csv" else "jsonl")
    # Out-of-order events land up to `disorder_ms` after their place: none is after --end.
    disorder = GeneratorConfig().disorder_ms
    config = GeneratorConfig(
        events=args.events,
        accounts=args.accounts,
        seed=args.seed,
        start_ms=end - span - disorder,
        span_ms=span,
    )
    if args.kind == "outcomes":
        from streamml.onnx_models.speedtests import RequestGeneratorConfig

        if not 0 <= args.missing_rate <= 1:
            print("streamml generate: --missing-rate must be in [0, 1]", file=sys.stderr)
            return 2
        try:
            drift = None if args.drift_at is None else parse_instant(args.drift_at)
        except ValueError as exc:
            print(f"streamml generate: --drift-at: {exc}", file=sys.stderr)
            return 2
        requests = RequestGeneratorConfig(
            requests=args.events,
            accounts=args.accounts,
            seed=args.seed,
            now_ms=end,
            drift_at_ms=drift,
        )
        print(write_outcomes(args.out, requests, args.missing_rate, args.outcome_seed))
        return 0
    if args.kind == "speed-tests":
        if fmt != "jsonl" or args.files != 1 or args.junk_rate:
            print(
                "streamml generate: speed tests are written as one JSON lines file",
                file=sys.stderr,
            )
            return 2
        print(write_speed_tests(args.out, config))
        return 0
    paths = write_events(
        args.out,
        config,
        fmt=fmt,
        files=args.files,
        junk_rate=args.junk_rate,
        progress=Progress(),
        by_key=args.by_key,
    )
    for p in paths:
        print(p)
    return 0
