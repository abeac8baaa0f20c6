from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import onnxruntime as ort
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from streamml.onnx_models import (
    FEATURE_NAMES,
    FeatureContract,
    LoadedModel,
    ModelRegistry,
    ModelVersion,
    export,
    train_triage,
    triage_contract,
)
from streamml.operators.scoring import (
    Prediction,
    PredictionBatch,
    ScoreBatch,
    ScoreError,
    Scorer,
    ScoreRequest,
    ScoringConfig,
    available_providers,
    score,
)

PINNED = datetime(2025, 1, 1, tzinfo=UTC)
N = len(FEATURE_NAMES)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("scoring")
    trained = train_triage(2000, seed=5, n_estimators=15, max_depth=3)
    reg = ModelRegistry(tmp / "registry")
    tree = export(
        trained.model,
        FEATURE_NAMES,
        "triage",
        X_holdout=trained.X_holdout,
        version="1",
        out=tmp / "tree.onnx",
        created_at=PINNED,
    )
    lin_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    lin_model.fit(trained.X_train, trained.y_train)
    lin = export(
        lin_model,
        FEATURE_NAMES,
        "triage",
        X_holdout=trained.X_holdout,
        version="2",
        out=tmp / "lin.onnx",
        created_at=PINNED,
    )
    v1 = reg.register(tree.path, contract=triage_contract())
    v2 = reg.register(lin.path, contract=triage_contract())
    nan_contract = FeatureContract(triage_contract().features, allow_nan=True)
    v3 = reg.register(tree.path, contract=nan_contract, name="triage-nan", version="1")
    return {"registry": reg, "v1": v1, "v2": v2, "v3": v3, "X": trained.X_holdout}


def one_by_one(reg: ModelRegistry, v: ModelVersion, X: np.ndarray) -> list[tuple[str, list[float]]]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        reg.load_bytes(v.name, v.version), opts, providers=["CPUExecutionProvider"]
    )
    out = []
    for row in X:
        labels, probs = sess.run(None, {"features": row[None, :].astype(np.float32)})
        out.append((str(labels[0]), [float(p) for p in probs[0]]))
    return out


def run_flow(items: list[Any], config: ScoringConfig, batch_size: int = 7, loader: Any = None):
    flow = Dataflow("scoring_test")
    inp = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    outs = score("score", inp, config, loader)
    oks: list[Any] = []
    errs: list[Any] = []
    op.output("oks", outs.oks, TestingSink(oks))
    op.output("errs", outs.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


def test_flow_equals_one_by_one_on_random_batches(setup: dict[str, Any]) -> None:
    reg, v1, v2 = setup["registry"], setup["v1"], setup["v2"]
    rng = np.random.default_rng(3)
    X = setup["X"][rng.permutation(len(setup["X"]))[:240]]
    versions = [v1 if i % 3 else v2 for i in range(len(X))]
    items = [
        ScoreRequest(f"r{i}", v.name, v.version, X[i].tolist()) for i, v in enumerate(versions)
    ]
    config = ScoringConfig(registry_dir=reg.root)
    for batch_size in (1, 13, 240):
        oks, errs = run_flow(items, config, batch_size)
        assert errs == []
        assert sorted(p.request_id for p in oks) == sorted(r.request_id for r in items)
        expected = {
            v.version: dict(
                zip(
                    [f"r{i}" for i in range(len(X)) if versions[i] is v],
                    one_by_one(reg, v, X[[i for i in range(len(X)) if versions[i] is v]]),
                    strict=True,
                )
            )
            for v in (v1, v2)
        }
        for p in oks:
            label, probs = expected[p.version][p.request_id]
            assert p.label == label
            if p.version == v1.version:
                # Tree ensembles: bitwise equal to scoring the rows one by one.
                assert list(p.probabilities) == probs
            else:
                # MatMul kernels may sum in another order for a batch: last-bit differences only.
                np.testing.assert_allclose(p.probabilities, probs, rtol=0, atol=1e-6)
            assert p.classes == ("modem", "network", "wifi")
            assert p.label == p.classes[int(np.argmax(p.probabilities))]


def test_score_batch_items_and_bad_rows(setup: dict[str, Any]) -> None:
    reg, v1 = setup["registry"], setup["v1"]
    X = setup["X"][:50].copy()
    X[4, 2] = np.nan
    X[9, 0] = np.inf
    ids = [f"b{i}" for i in range(50)]
    oks, errs = run_flow([ScoreBatch(v1.name, v1.version, ids, X)], ScoringConfig(reg.root))
    assert len(oks) == 1 and isinstance(oks[0], PredictionBatch)
    batch = oks[0]
    good = [i for i in range(50) if i not in (4, 9)]
    assert batch.request_ids == tuple(ids[i] for i in good)
    expected = one_by_one(reg, v1, X[good])
    assert [str(x) for x in batch.labels] == [e[0] for e in expected]
    np.testing.assert_array_equal(
        batch.probabilities, np.array([e[1] for e in expected], np.float32)
    )
    assert {(e.request_id, e.reason) for e in errs} == {("b4", "nan"), ("b9", "non_finite")}
    rows = list(batch.rows())
    assert rows[0] == Prediction(
        ids[0], v1.name, v1.version, expected[0][0], tuple(expected[0][1]), batch.classes
    )


def test_malformed_rows_become_errors_not_crashes(setup: dict[str, Any]) -> None:
    reg, v1 = setup["registry"], setup["v1"]
    good = setup["X"][0].tolist()
    items: list[Any] = [
        ScoreRequest("ok", v1.name, v1.version, good),
        ScoreRequest("short", v1.name, v1.version, good[:-1]),
        ScoreRequest("long", v1.name, v1.version, [*good, 1.0]),
        ScoreRequest("nan", v1.name, v1.version, [math.nan, *good[1:]]),
        ScoreRequest("inf", v1.name, v1.version, [*good[:-1], math.inf]),
        ScoreRequest("huge", v1.name, v1.version, [*good[:-1], 1e300]),
        ScoreRequest("text", v1.name, v1.version, ["1.0"] * N),
        ScoreRequest("ragged", v1.name, v1.version, [[1.0, 2.0], 3.0]),
        ScoreRequest("none", v1.name, v1.version, None),
        ScoreRequest("2d", v1.name, v1.version, [good]),
        ScoreRequest("unknown-version", v1.name, "99", good),
        ScoreRequest("unknown-model", "nope", "1", good),
        ScoreRequest("traversal", "..", "1", good),
        ScoreRequest("bad-model-type", 5, "1", good),  # type: ignore[arg-type]
        {"not": "a request"},
        ScoreBatch(v1.name, v1.version, ["m0", "m1"], np.zeros((2, N - 1))),
        ScoreBatch(v1.name, v1.version, ["s0"], np.array([["x"] * N])),
        ScoreRequest("ok2", v1.name, v1.version, np.asarray(good, dtype=np.float64)),
        ScoreRequest("ok3", v1.name, v1.version, np.asarray(good, dtype=np.float32)),
        ScoreRequest("nan32", v1.name, v1.version, np.asarray([math.nan, *good[1:]], np.float32)),
        ScoreRequest("inf32", v1.name, v1.version, np.asarray([*good[1:], math.inf], np.float32)),
    ]
    oks, errs = run_flow(items, ScoringConfig(reg.root), batch_size=5)
    assert sorted(p.request_id for p in oks) == ["ok", "ok2", "ok3"]
    reasons = {e.request_id: e.reason for e in errs}
    assert reasons == {
        "short": "bad_length",
        "long": "bad_length",
        "nan": "nan",
        "inf": "non_finite",
        "huge": "non_finite",
        "text": "not_numeric",
        "ragged": "not_numeric",
        "none": "bad_length",
        "2d": "bad_length",
        "unknown-version": "unknown_model",
        "unknown-model": "unknown_model",
        "traversal": "unsafe_model",
        "bad-model-type": "bad_request",
        None: "bad_request",
        "m0": "bad_length",
        "m1": "bad_length",
        "s0": "not_numeric",
        "nan32": "nan",
        "inf32": "non_finite",
    }
    assert all(isinstance(e, ScoreError) and e.detail for e in errs)
    # The single-request path gives the same verdicts.
    scorer = Scorer(ScoringConfig(reg.root))
    for item in items:
        if isinstance(item, ScoreRequest):
            (res,) = scorer.score_batch([item])
            if item.request_id.startswith("ok"):
                assert isinstance(res, Prediction)
            else:
                assert (res.request_id, res.reason) == (item.request_id, reasons[item.request_id])
    short = next(e for e in errs if e.request_id == "short")
    assert "expected 10 features" in short.detail


def test_nan_allowed_when_the_contract_says_so(setup: dict[str, Any]) -> None:
    reg, v3 = setup["registry"], setup["v3"]
    row = [math.nan, *setup["X"][0].tolist()[1:]]
    out = Scorer(ScoringConfig(reg.root)).score_batch(
        [
            ScoreRequest("n", v3.name, v3.version, row),
            ScoreRequest("i", v3.name, v3.version, [math.inf] * N),
        ]
    )
    assert isinstance(out[0], Prediction)
    assert out[0].label == one_by_one(reg, v3, np.array([row], np.float32))[0][0]
    assert isinstance(out[1], ScoreError) and out[1].reason == "non_finite"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=N, max_size=N),
        min_size=1,
        max_size=40,
    ),
    chunk=st.integers(1, 8),
)
def test_batched_equals_one_by_one_property(
    setup: dict[str, Any], rows: list[list[float]], chunk: int
) -> None:
    reg, v1 = setup["registry"], setup["v1"]
    scorer = _shared_scorer(reg.root, chunk)
    reqs = [ScoreRequest(str(i), v1.name, v1.version, r) for i, r in enumerate(rows)]
    got = scorer.score_batch(reqs)
    X = np.array(rows, dtype=np.float32)
    expected = one_by_one(reg, v1, X)
    assert [(p.label, list(p.probabilities)) for p in got] == expected
    singles = [scorer.score_batch([ScoreRequest("s", v1.name, v1.version, x)])[0] for x in X]
    assert [(p.label, list(p.probabilities)) for p in singles] == expected


_SCORERS: dict[tuple[Path, int], Scorer] = {}


def _shared_scorer(root: Path, chunk: int) -> Scorer:
    key = (root, chunk)
    if key not in _SCORERS:
        _SCORERS[key] = Scorer(ScoringConfig(root, max_batch_rows=chunk))
    return _SCORERS[key]


def test_one_session_per_version_and_thread_config(setup: dict[str, Any]) -> None:
    reg, v1, v2 = setup["registry"], setup["v1"], setup["v2"]
    calls: list[tuple[str, str]] = []

    def loader(name: str, version: str) -> LoadedModel:
        calls.append((name, version))
        return reg.load(name, version)

    X = setup["X"][:30]
    items = [ScoreRequest(str(i), v1.name, (v1, v2)[i % 2].version, X[i]) for i in range(30)]
    items.append(ScoreRequest("u", v1.name, "404", X[0]))
    items.append(ScoreRequest("u2", v1.name, "404", X[0]))
    config = ScoringConfig(registry_dir=None, intra_op_threads=2)
    oks, errs = run_flow(items, config, batch_size=4, loader=loader)
    assert len(oks) == 30 and {e.request_id for e in errs} == {"u", "u2"}
    assert sorted(calls) == [("triage", "1"), ("triage", "2"), ("triage", "404")]
    scorer = Scorer(config, loader)
    sess = scorer.session(v1.name, v1.version)
    assert not isinstance(sess, ScoreError)
    assert sess.session.get_session_options().intra_op_num_threads == 2
    assert sess.session.get_providers() == ["CPUExecutionProvider"]


def test_a_newly_registered_version_is_picked_up_after_the_retry_delay(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "r")
    scorer = Scorer(ScoringConfig(reg.root, missing_retry_s=0.0))
    req = ScoreRequest("a", "triage", "1", setup["X"][0])
    assert scorer.score_batch([req])[0].reason == "unknown_model"
    src = setup["registry"].get("triage", "1").path
    reg.register(src, contract=triage_contract())
    assert isinstance(scorer.score_batch([req])[0], Prediction)


def test_config_errors_raise_at_build_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="registry_dir is not set"):
        Scorer(ScoringConfig())
    with pytest.raises(ValueError, match="not available"):
        Scorer(ScoringConfig(tmp_path, providers=("NoSuchExecutionProvider",)))
    with pytest.raises(ValueError, match="max_batch_rows"):
        ScoringConfig(tmp_path, max_batch_rows=0)
    assert available_providers()[-1] == "CPUExecutionProvider"
