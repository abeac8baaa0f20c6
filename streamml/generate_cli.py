"""`streamml generate`: write a seeded signal-error stream to CSV or JSON lines files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from streamml.console import Progress
from streamml.state.definitions import parse_instant

__all__ = ["register"]


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
    from streamml.generate import write_events, write_outcomes, write_speed_tests
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
