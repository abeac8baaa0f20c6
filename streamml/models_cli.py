"""`streamml models`: train, register, list, show, promote and route ONNX models in the registry."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from streamml.onnx_models import (
    REGISTRY_ENV,
    STAGES,
    TRAINERS,
    TRIAGE_MODEL_NAME,
    ContractError,
    ExportError,
    FeatureContract,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    Routing,
    default_registry_dir,
    ensure_demo_registry,
    parse_split,
    train_and_export,
    triage_contract,
)

__all__ = ["register"]

_USER_ERRORS = (RegistryError, ContractError, ExportError, ValueError, OSError)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"streamml models {args.models_command}: error: {message}", file=sys.stderr)
    return 2


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _version_rows(versions: Sequence[ModelVersion]) -> list[list[str]]:
    rows = []
    for v in versions:
        metrics = v.provenance.get("metrics") or {}
        rows.append(
            [
                v.name,
                v.version,
                v.stage,
                v.sha256[:12],
                _fmt(metrics.get("accuracy")),
                _fmt(v.provenance.get("created_at")),
                _fmt(v.provenance.get("registered_at")),
            ]
        )
    return rows


_LIST_HEADERS = ("NAME", "VERSION", "STAGE", "SHA256", "ACCURACY", "CREATED", "REGISTERED")


def _registry(args: argparse.Namespace) -> ModelRegistry:
    return ModelRegistry(args.registry)


def _guard(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _USER_ERRORS as exc:
            return _fail(args, str(exc))

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _cmd_train(args: argparse.Namespace) -> int:
    """Generate data, train, export with parity check and register as a candidate."""
    if args.rows < 50:
        return _fail(args, f"--rows must be at least 50, got {args.rows}")
    if args.estimators < 1 or args.depth < 1:
        return _fail(args, "--estimators and --depth must be positive")
    registry = _registry(args)
    version = args.version or registry.next_version(args.name)
    progress = sys.stderr if not args.json else None
    if progress:
        print(
            f"training {args.name}@{version} on {args.rows} generated speed tests "
            f"(seed {args.seed}, {args.trainer}, {args.estimators} trees of depth "
            f"{args.depth})...",
            file=progress,
        )
    with tempfile.TemporaryDirectory() as tmp:
        trained, exported = train_and_export(
            Path(tmp) / "model.onnx",
            name=args.name,
            version=version,
            rows=args.rows,
            seed=args.seed,
            n_estimators=args.estimators,
            max_depth=args.depth,
            created_by="streamml models train",
            trainer=args.trainer,
        )
        registered = registry.register(
            exported.path,
            contract=triage_contract(),
            name=args.name,
            version=version,
            registered_by="streamml models train",
        )
    if args.json:
        _emit_json(
            {
                "model": registered.to_json(),
                "metrics": trained.metrics,
                "parity": exported.parity.to_json(),
            }
        )
        return 0
    m = trained.metrics
    rows = [[k, _fmt(v)] for k, v in m.items()]
    rows.append(["parity_label_agreement", _fmt(exported.parity.label_agreement)])
    rows.append(["parity_max_prob_diff", f"{exported.parity.max_probability_diff:.2e}"])
    print(_table(("METRIC", "VALUE"), rows))
    print(
        f"\nregistered {registered.ref} as {registered.stage} (sha256 {registered.sha256[:12]}) "
        f"in {registry.root}; accuracy {m['accuracy']:.3f} vs majority class "
        f"{m['majority_baseline']:.3f}"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    """List registered model versions."""
    versions = _registry(args).list(args.name)
    if args.json:
        _emit_json([v.to_json() for v in versions])
        return 0
    if not versions:
        print(f"no models in {args.registry}")
        return 0
    print(_table(_LIST_HEADERS, _version_rows(versions)))
    return 0


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, sep, version = ref.partition("@")
    if not name or (sep and not version):
        raise ValueError(f"expected NAME or NAME@VERSION, got {ref!r}")
    return name, version or None


def _cmd_show(args: argparse.Namespace) -> int:
    """Show one version: stage, hash, contract and provenance."""
    name, version = _split_ref(args.ref)
    registry = _registry(args)
    v = registry.show(name, version)
    if args.json:
        data = v.to_json()
        data["history"] = [h for h in registry.history(name) if h["version"] == v.version]
        data["routing"] = registry.routing(name).to_json()
        _emit_json(data)
        return 0
    prov = v.provenance
    print(f"{v.ref}  stage={v.stage}  sha256={v.sha256}")
    print(f"path: {v.path}")
    print(f"classes: {', '.join(v.classes)}")
    for key in ("created_at", "created_by", "registered_at", "registered_by", "source_path"):
        print(f"{key}: {_fmt(prov.get(key))}")
    print(f"training_data_sha256: {_fmt(prov.get('training_data_sha256'))}")
    metrics = prov.get("metrics") or {}
    if metrics:
        print(_table(("METRIC", "VALUE"), [[k, _fmt(x)] for k, x in metrics.items()]))
    print()
    rows = [
        [
            i,
            f.name,
            f.dtype,
            f.ttl_ms,
            f.on_missing.policy
            + (f"={f.on_missing.value}" if f.on_missing.policy == "default" else ""),
        ]
        for i, f in enumerate(v.contract.features)
    ]
    print(_table(("#", "FEATURE", "DTYPE", "TTL_MS", "ON_MISSING"), rows))
    print(f"allow_nan: {v.contract.allow_nan}")
    print()
    print(_routing_text(registry.routing(name)))
    return 0


def _routing_text(routing: Routing) -> str:
    head = f"routing of {routing.name}: live {_fmt(routing.live)}"
    if routing.experiment is not None:
        head += f", experiment {routing.experiment}"
    if routing.revision:
        head += f" (revision {routing.revision}, {routing.updated_at} by {routing.updated_by})"
    rows: list[list[str]] = []
    if routing.split:
        rows += [[f"ab:{v}", v, "answer", f"{w:.2%}"] for v, w in routing.split]
    elif routing.live is not None:
        rows.append(["live", routing.live, "answer", "100.00%"])
    rows += [[f"shadow:{v}", v, "shadow", "-"] for v in routing.shadow]
    if not rows:
        return head + "\nno version answers: make one live or set a split"
    return head + "\n" + _table(("VARIANT", "VERSION", "ROLE", "SHARE"), rows)


def _cmd_route(args: argparse.Namespace) -> int:
    """Show or change a model's routing: live version, A/B split, shadows."""
    registry = _registry(args)
    changing = (
        args.live is not None
        or args.split is not None
        or args.experiment is not None
        or args.shadow is not None
        or args.clear_split
    )
    if not changing:
        routing = registry.routing(args.name)
        if args.json:
            _emit_json({"name": args.name, "routing": routing.to_json(), "changed": False})
        else:
            print(_routing_text(routing))
        return 0
    if args.split is not None and args.clear_split:
        return _fail(args, "give either --split or --clear-split, not both")
    before = registry.routing(args.name)
    shadow = None
    if args.shadow is not None:
        shadow = [s.strip() for s in args.shadow.split(",") if s.strip()]
    routing = registry.route(
        args.name,
        live=args.live,
        split=parse_split(args.split) if args.split is not None else None,
        experiment=args.experiment,
        shadow=shadow,
        clear_split=args.clear_split,
        actor="streamml models route",
    )
    changed = not routing.same_routes(before)
    if args.json:
        _emit_json({"name": args.name, "routing": routing.to_json(), "changed": changed})
        return 0
    print(_routing_text(routing))
    if not changed:
        print("(unchanged)")
    return 0


def _instant(text: str | None) -> int | None:
    from streamml.state.definitions import parse_instant

    return None if text is None else parse_instant(text)


def _cmd_retrain(args: argparse.Namespace) -> int:
    """Retrain on outcomes and register as a shadow."""
    from streamml.retraining import retrain

    result = retrain(
        args.registry,
        args.prediction_store,
        args.name,
        since=_instant(args.since),
        until=_instant(args.until),
        trainer=args.trainer,
        seed=args.seed,
        estimators=args.estimators,
        depth=args.depth,
        shadow=not args.no_shadow,
    )
    if args.json:
        _emit_json(
            {
                "name": result.name,
                "version": result.version,
                "parent": result.parent,
                "metrics": result.metrics,
                "lineage": result.lineage,
            }
        )
        return 0
    m = result.metrics
    print(
        f"{result.name}@{result.version} trained on {result.rows - result.holdout_rows:,} "
        f"answered requests with outcomes (parent {result.name}@{result.parent}); "
        f"{'routed as a shadow' if not args.no_shadow else 'registered as a candidate'}"
    )
    rows = [
        ["accuracy", _fmt(m["accuracy"]), _fmt(result.parent_holdout_accuracy)],
        ["macro F1", _fmt(m["macro_f1"]), "-"],
        ["log loss", _fmt(m["log_loss"]), "-"],
    ]
    print(_table([f"holdout ({result.holdout_rows:,} latest)", "new", "answering"], rows))
    print(f"training set sha256 {result.lineage['training_set_sha256'][:16]}...")
    return 0


def _comparison_rows(comparisons) -> list[list[str]]:
    return [
        [
            c.shadow,
            f"{c.scored:,}",
            f"{c.agreement:.1%}",
            f"{c.outcomes:,}",
            "-" if c.outcomes == 0 else f"{c.answer_accuracy:.1%}",
            "-" if c.outcomes == 0 else f"{c.shadow_accuracy:.1%}",
            "-" if c.outcomes == 0 else f"{c.gain:+.1%}",
        ]
        for c in comparisons
    ]


_COMPARE_HEADERS = ["shadow", "scored", "agrees", "outcomes", "answer acc", "shadow acc", "gain"]


def _comparison_json(c) -> dict[str, Any]:
    return {
        "shadow": c.shadow,
        "scored": c.scored,
        "agreement": c.agreement,
        "outcomes": c.outcomes,
        "answer_accuracy": c.answer_accuracy if c.outcomes else None,
        "shadow_accuracy": c.shadow_accuracy if c.outcomes else None,
    }


def _cmd_compare(args: argparse.Namespace) -> int:
    """Compare the shadows with the answering model."""
    from streamml.retraining import compare

    found = compare(
        args.prediction_store, args.name, since=_instant(args.since), until=_instant(args.until)
    )
    if args.json:
        _emit_json([_comparison_json(c) for c in found])
        return 0
    if not found:
        print(f"no shadow of {args.name} was scored in {args.prediction_store}")
        return 0
    print(_table(_COMPARE_HEADERS, _comparison_rows(found)))
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    """Move a version to a stage, or promote a winning shadow."""
    if args.auto:
        from streamml.retraining import auto_promote

        if args.version is not None or args.prediction_store is None:
            return _fail(args, "--auto takes no VERSION and needs --prediction-store")
        best = auto_promote(
            args.registry,
            args.prediction_store,
            args.name,
            margin=args.margin,
            min_outcomes=args.min_outcomes,
        )
        if args.json:
            _emit_json({"promoted": None if best is None else _comparison_json(best)})
        elif best is None:
            print(
                f"no shadow of {args.name} beats the answering model by {args.margin:.1%} over "
                f">= {args.min_outcomes} outcomes; nothing promoted"
            )
        else:
            print(f"{args.name}@{best.shadow}: shadow -> live")
            print(_table(_COMPARE_HEADERS, _comparison_rows([best])))
        return 0
    if args.version is None:
        return _fail(args, "give the VERSION to promote, or --auto")
    registry = _registry(args)
    before = {v.version: v.stage for v in registry.versions(args.name)}
    v = registry.promote(args.name, args.version, args.stage)
    after = {x.version: x.stage for x in registry.versions(args.name)}
    changed = {k: (before.get(k), after[k]) for k in after if before.get(k) != after[k]}
    if args.json:
        _emit_json({"model": v.to_json(), "changed": {k: list(x) for k, x in changed.items()}})
        return 0
    if not changed:
        print(f"{v.ref} is already {v.stage}")
    for ver, (old, new) in changed.items():
        print(f"{args.name}@{ver}: {old} -> {new}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    """Register an ONNX file with its feature contract."""
    contract_path = Path(args.contract)
    try:
        raw = orjson.loads(contract_path.read_bytes())
    except FileNotFoundError:
        return _fail(args, f"contract file {args.contract!r} does not exist")
    except orjson.JSONDecodeError as exc:
        return _fail(args, f"contract file {args.contract!r} is not valid JSON: {exc}")
    contract = FeatureContract.from_json(raw)
    v = _registry(args).register(
        args.path,
        contract=contract,
        name=args.name,
        version=args.version,
        registered_by="streamml models register",
    )
    if args.json:
        _emit_json(v.to_json())
        return 0
    print(f"registered {v.ref} as {v.stage} (sha256 {v.sha256[:12]}) in {args.registry}")
    return 0


def _cmd_seed(args: argparse.Namespace) -> int:
    """Register the bundled demo model and make it live."""
    v = ensure_demo_registry(args.registry, stage=args.stage)
    if args.json:
        _emit_json(v.to_json())
        return 0
    print(f"{v.ref} is {v.stage} in {args.registry} (bundled demo model, sha256 {v.sha256[:12]})")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        type=Path,
        default=default_registry_dir(),
        metavar="DIR",
        help=f"model registry directory (default: ${REGISTRY_ENV}, else ./models)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` command and its subcommands to the top-level subparsers `sub`."""
    models = sub.add_parser(
        "models",
        help="train, register, list, show, promote and route ONNX models",
        description=(
            "Manage the versioned model registry. Versions are immutable and verified by "
            "sha256 on load; stages are candidate, live, shadow and retired (one live version "
            "per model; promoting another retires the old one)."
        ),
    )
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)

    p = msub.add_parser(
        "train",
        help="generate speed-test data, train the triage model, export and register it",
        description=(
            "Generate seeded speed-test data, train a gradient-boosted classifier that says "
            "whether the trouble is wifi, modem or network, export it to ONNX (refused unless "
            "ONNX Runtime matches the native model on held-out rows) and register it as a "
            "candidate."
        ),
    )
    p.add_argument(
        "--trainer",
        choices=TRAINERS,
        default="sklearn",
        help="sklearn: GradientBoostingClassifier; lightgbm: LGBMClassifier, needs "
        "streamml[train] (default: %(default)s)",
    )
    p.add_argument("--name", default=TRIAGE_MODEL_NAME, help="model name (default: %(default)s)")
    p.add_argument(
        "--rows", type=int, default=20_000, help="rows to generate (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=7, help="data and model seed (default: %(default)s)")
    p.add_argument(
        "--estimators", type=int, default=50, help="trees per class (default: %(default)s)"
    )
    p.add_argument("--depth", type=int, default=3, help="tree depth (default: %(default)s)")
    p.add_argument("--version", help="version to register under (default: next integer)")
    _common(p)
    p.set_defaults(func=_guard(_cmd_train))

    p = msub.add_parser("list", help="list model versions and their stages")
    p.add_argument("name", nargs="?", help="only this model")
    _common(p)
    p.set_defaults(func=_guard(_cmd_list))

    p = msub.add_parser(
        "show",
        help="show a version's contract, metrics and provenance",
        description="Show NAME@VERSION, or NAME's live version (else its newest).",
    )
    p.add_argument("ref", metavar="NAME[@VERSION]")
    _common(p)
    p.set_defaults(func=_guard(_cmd_show))

    p = msub.add_parser(
        "promote",
        help="move a version to a stage (live by default), or promote a winning shadow",
        description=(
            "Move NAME VERSION to --stage (default live; promoting to live retires the previous "
            "live, and running flows pick the change up through the registry's metadata). With "
            "--auto and no VERSION: promote the shadow that beats the answering model by at "
            "least --margin accuracy over at least --min-outcomes outcomes on the same requests "
            "(see `streamml models compare`), if any."
        ),
    )
    p.add_argument("name")
    p.add_argument("version", nargs="?")
    p.add_argument("--stage", default="live", choices=STAGES, help="target stage")
    p.add_argument("--auto", action="store_true", help="promote a shadow that wins (policy)")
    p.add_argument("--prediction-store", type=Path, help="with --auto: the prediction store")
    p.add_argument("--margin", type=float, default=0.02, help="with --auto: accuracy margin")
    p.add_argument("--min-outcomes", type=int, default=500, help="with --auto: outcomes needed")
    _common(p)
    p.set_defaults(func=_guard(_cmd_promote))

    p = msub.add_parser(
        "retrain",
        help="retrain on answered requests and their outcomes; register it as a shadow",
        description=(
            "Build a training set from the prediction store: every request NAME answered in "
            "[--since, --until) that got an outcome (streamml run outcomes), with its features "
            "as scored and the outcome as label. Train on the earlier 80%% (by request time), "
            "evaluate the new model and the answering one on the later 20%%, export to ONNX "
            "with the parity check, register the candidate with its lineage (training set "
            "fingerprint, feature versions, code version, parent version, offline metrics) "
            "and route it as a shadow."
        ),
    )
    p.add_argument("name")
    p.add_argument("--prediction-store", type=Path, required=True, help="prediction store root")
    p.add_argument("--since", help="first request time (epoch ms or ISO-8601)")
    p.add_argument("--until", help="end of the request times, excluded")
    p.add_argument("--trainer", choices=["sklearn", "lightgbm"], default="sklearn")
    p.add_argument("--estimators", type=int, default=50, help="boosting rounds")
    p.add_argument("--depth", type=int, default=3, help="tree depth")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-shadow", action="store_true", help="register only; do not route")
    _common(p)
    p.set_defaults(func=_guard(_cmd_retrain))

    p = msub.add_parser(
        "compare",
        help="shadows beside the answering model on the same requests",
        description=(
            "For each shadow version of NAME: the requests it was scored on, how often it "
            "agreed with the answer, and the accuracy of both on the requests with an outcome."
        ),
    )
    p.add_argument("name")
    p.add_argument("--prediction-store", type=Path, required=True, help="prediction store root")
    p.add_argument("--since", help="first request time (epoch ms or ISO-8601)")
    p.add_argument("--until", help="end of the request times, excluded")
    _common(p)
    p.set_defaults(func=_guard(_cmd_compare))

    p = msub.add_parser(
        "route",
        help="show or change a model's routing: live version, A/B split, shadows",
        description=(
            "Without change flags, show NAME's routing. --live promotes a version to live; "
            "--split sends answering traffic to versions by weight, each account keeping its "
            "version while experiment and weights are unchanged (hash of experiment and "
            "account); --shadow makes exactly these versions shadows (scored and logged, never "
            "answered; shadows not listed are retired, '' clears them). One change, one registry "
            "revision, picked up by running flows."
        ),
    )
    p.add_argument("name")
    p.add_argument("--live", metavar="V", help="make version V live (retires the previous live)")
    p.add_argument(
        "--split", metavar="V=W,...", help="A/B split weights, e.g. 3=0.9,4=0.1 (normalised)"
    )
    p.add_argument("--experiment", metavar="NAME", help="experiment name for the assignment hash")
    p.add_argument("--shadow", metavar="X[,Y]", help="the shadow versions ('' for none)")
    p.add_argument("--clear-split", action="store_true", help="remove the split and experiment")
    _common(p)
    p.set_defaults(func=_guard(_cmd_route))

    p = msub.add_parser(
        "register",
        help="register an exported ONNX file with its feature contract",
        description=(
            "Copy PATH.onnx into the registry as a candidate. The contract JSON lists the "
            'features in order: {"features": [{"name": ..., "ttl_ms": 60000, "on_missing": '
            '"reject"}], "allow_nan": false}.'
        ),
    )
    p.add_argument("path", metavar="PATH.onnx")
    p.add_argument("--name", help="model name (default: the model's streamml.name metadata)")
    p.add_argument("--version", help="version (default: model metadata, else next integer)")
    p.add_argument("--contract", required=True, metavar="CONTRACT.json", help="feature contract")
    _common(p)
    p.set_defaults(func=_guard(_cmd_register))

    p = msub.add_parser(
        "seed",
        help="register the bundled demo model (works offline)",
        description="Register the bundled speed-test triage model and put it in --stage.",
    )
    p.add_argument("--stage", default="live", choices=STAGES, help="stage (default: live)")
    _common(p)
    p.set_defaults(func=_guard(_cmd_seed))
