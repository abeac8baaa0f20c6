"""`streamml demo lifecycle`: a change in the world, seen, learned and put live, with figures.

Four days of slow speed tests, each day a stream of generated requests answered by the
prediction flow and, later, resolved by outcomes joined with the outcome flow:

1. before the change, the live model (the bundled triage model) as trained;
2. a modem firmware rollout reaches half the modems: their slow tests are now modem trouble
   that looks like network trouble. Realised accuracy falls once the outcomes come in. Before
   them, the monitoring shows the inputs drifting from the training data (PSI of latency and
   packet loss); the confidence-based accuracy estimate does not move, since it cannot see a
   change in the rule from inputs to outcomes;
3. the model retrained on day 2's answers and outcomes runs as a shadow on day 3's requests,
   beside the live one, on the same requests;
4. the shadow beats the live model by the policy's margin and is promoted; day 4 is answered by
   it.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streamml.console import format_table

__all__ = ["DayFigures", "print_figures", "run_lifecycle"]

DAY_MS = 86_400_000
NAN = float("nan")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class DayFigures:
    """One day's figures: what answered and how well, realised and estimated."""

    day: int
    title: str
    answered_by: str
    requests: int
    outcomes: int
    estimated_accuracy: float
    realised_accuracy: float
    shadow: str | None = None
    shadow_accuracy: float | None = None
    psi: dict[str, float] = field(default_factory=dict)

    @property
    def top_drift(self) -> list[tuple[str, float]]:
        """The two served features that drift most from the training data."""
        return sorted(self.psi.items(), key=lambda x: -x[1])[:2]


def _day_metrics(store: Path, registry: Path, day_start: int) -> dict[tuple, float]:
    """Return one UTC day's monitoring figures: (version, variant, metric, feature) -> value."""
    from streamml.operators.monitoring_store import compute_store_metrics, read_metrics

    run = compute_store_metrics(store, registry)
    table = read_metrics(run.path).to_pylist()
    out = {}
    for r in table:
        start = r["window_start"]
        if r["window"] != "day" or start is None or int(start.timestamp() * 1000) != day_start:
            continue
        if r["metric"] == "freshness" and r["status"] is not None:
            metric = f"freshness:{r['status']}"
            out[(r["version"], r["variant"], metric, r["feature"])] = r["value"]
        elif r["class"] is None and r["predicted"] is None and r["status"] is None:
            out[(r["version"], r["variant"], r["metric"], r["feature"])] = r["value"]
    return out


def _drift(metrics: dict[tuple, float], version: str, variant: str) -> dict[str, float]:
    """Return the PSI of each served feature against the training data.

    Features mostly filled with their default (here the online error count: the lifecycle runs
    no feature flow) are left out: that is a freshness problem, which the freshness mix shows.
    """
    psi = [
        (f, v)
        for (ver, var, m, f), v in metrics.items()
        if ver == version
        and var == variant
        and m == "psi"
        and f is not None
        and v is not None
        and (metrics.get((ver, var, "freshness:defaulted", f)) or 0.0) < 0.5
    ]
    return dict(psi)


def run_lifecycle(
    root: Path,
    *,
    requests: int = 3000,
    accounts: int = 20_000,
    seed: int = 7,
    margin: float = 0.05,
    show: Callable[[str], None] = print,
) -> list[DayFigures]:
    """Run the four days under `root` (emptied first); return each day's figures."""
    from streamml.dataflows.outcomes import OutcomesFlowConfig
    from streamml.dataflows.predict import PredictFlowConfig, RequestsConfig
    from streamml.onnx_models import ModelRegistry, ensure_demo_registry
    from streamml.onnx_models.speedtests import (
        OutcomeConfig,
        RequestGeneratorConfig,
        generate_outcomes,
    )
    from streamml.outcomes_cli import run_outcomes
    from streamml.predict_cli import run_predict
    from streamml.retraining import auto_promote, retrain
    from streamml.telemetry import TelemetryConfig
    from streamml.telemetry_process import start_telemetry_process

    for name in ("models", "state", "outcomes"):
        shutil.rmtree(root / name, ignore_errors=True)
    (root / "outcomes").mkdir(parents=True)
    live = ensure_demo_registry(root / "models")
    registry = ModelRegistry(root / "models")
    store = root / "state" / "predictions"
    drift_at = START_MS + DAY_MS
    figures: list[DayFigures] = []
    titles = {
        1: "before the firmware rollout",
        2: "after the rollout (half the modems)",
        3: "retrained model as a shadow",
        4: "after promotion",
    }

    def answer_day(day: int, telemetry_url: str) -> RequestGeneratorConfig:
        gen = RequestGeneratorConfig(
            requests=requests,
            accounts=accounts,
            seed=seed,
            stream=day,
            now_ms=START_MS + day * DAY_MS - 1,
            span_ms=DAY_MS - 1,
            drift_at_ms=drift_at,
        )
        config = PredictFlowConfig(
            requests=RequestsConfig(kind="generate", generator=gen),
            state_dir=root / "state",
            registry_dir=root / "models",
            telemetry_url=telemetry_url,
            prediction_store=store,
        )
        result = run_predict(config, show_progress=False)
        if result.returncode != 0:
            raise RuntimeError(f"the prediction flow failed on day {day}")
        return gen

    def resolve_day(day: int, gen: RequestGeneratorConfig) -> None:
        outcomes = generate_outcomes(
            gen, OutcomeConfig(max_delay_ms=DAY_MS // 2, missing_rate=0.05, seed=day)
        )
        path = root / "outcomes" / f"day-{day}.jsonl"
        import orjson

        path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in outcomes))
        result = run_outcomes(
            OutcomesFlowConfig(prediction_store=store, paths=(str(path),), drain=True),
            show_progress=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"the outcome flow failed on day {day}")

    with start_telemetry_process(TelemetryConfig(seed=seed)) as telemetry:
        for day in (1, 2, 3, 4):
            since, until = START_MS + (day - 1) * DAY_MS, START_MS + day * DAY_MS
            answering = registry.live(live.name)
            gen = answer_day(day, telemetry.url)
            before = _day_metrics(store, registry.root, since)
            estimate = before.get((answering.version, "live", "estimated_accuracy", None), NAN)
            drift = _drift(before, answering.version, "live")
            top = sorted(drift.items(), key=lambda x: -x[1])[:2]
            show(
                f"day {day} ({titles[day]}): {requests:,} requests answered by "
                f"v{answering.version}; before any outcome: estimated accuracy {estimate:.1%}, "
                "largest input drift (PSI against the training data) "
                + ", ".join(f"{name} {value:.2f}" for name, value in top)
            )
            resolve_day(day, gen)
            after = _day_metrics(store, registry.root, since)
            acc = after.get((answering.version, "live", "accuracy", None), NAN)
            n = int(after.get((answering.version, "live", "outcomes", None), 0))
            shadow = next(
                (
                    (version, value)
                    for (version, variant, metric, _f), value in after.items()
                    if metric == "accuracy" and variant.startswith("shadow:")
                ),
                None,
            )
            figures.append(
                DayFigures(
                    day=day,
                    title=titles[day],
                    answered_by=answering.version,
                    requests=requests,
                    outcomes=n,
                    estimated_accuracy=estimate,
                    realised_accuracy=acc,
                    psi=drift,
                    shadow=None if shadow is None else shadow[0],
                    shadow_accuracy=None if shadow is None else shadow[1],
                )
            )
            line = f"       outcomes joined: realised accuracy {acc:.1%} over {n:,}"
            if shadow is not None:
                line += f"; shadow v{shadow[0]} on the same requests: {shadow[1]:.1%}"
            show(line)
            if day == 2:
                result = retrain(registry.root, store, live.name, since=drift_at, until=until)
                show(
                    f"       retrained on day 2's answers and outcomes: v{result.version} "
                    f"(holdout accuracy {result.metrics['accuracy']:.1%} against "
                    f"{result.parent_holdout_accuracy:.1%} for v{result.parent}), routed as a "
                    "shadow"
                )
            if day == 3:
                best = auto_promote(
                    registry.root, store, live.name, margin=margin, min_outcomes=requests // 4
                )
                if best is None:
                    show(f"       no shadow beats v{answering.version} by {margin:.0%}: kept")
                else:
                    show(
                        f"       v{best.shadow} beats v{answering.version} by {best.gain:+.1%} "
                        f"over {best.outcomes:,} outcomes: promoted to live"
                    )
    return figures


def print_figures(figures: list[DayFigures]) -> None:
    """Print the days as a table."""
    rows = [
        (
            f.day,
            f.title,
            f"v{f.answered_by}",
            f"{f.estimated_accuracy:.1%}",
            f"{f.realised_accuracy:.1%}",
            f"{f.estimated_accuracy - f.realised_accuracy:+.1%}",
            ", ".join(f"{name} {v:.2f}" for name, v in f.top_drift),
            "-" if f.shadow is None else f"v{f.shadow}: {f.shadow_accuracy:.1%}",
        )
        for f in figures
    ]
    headers = [
        "day",
        "",
        "answered by",
        "estimated",
        "realised",
        "estimation error",
        "largest PSI",
        "shadow",
    ]
    sys.stdout.write(format_table(rows, headers=headers) + "\n")
