"""Batched ONNX Runtime scoring as a Bytewax operator.

`score` takes a stream of `ScoreRequest` (one row) and/or `ScoreBatch` (a matrix of rows for one
model version) and returns `ScoreOutputs`: `oks` carries a `Prediction` per request and a
`PredictionBatch` per batch, `errs` a `ScoreError` per row that could not be scored (wrong length,
non-numeric, NaN when the model's contract forbids it, infinite, unknown or unsafe model version,
runtime failure). Nothing in the data crashes the flow.

Each Bytewax batch is grouped by model version and scored with one `run` per group (chunked at
`max_batch_rows`), so results equal scoring the rows one by one. Sessions are created lazily,
one per process per model version, and shared by that process's worker threads (ONNX Runtime's
`run` is thread-safe); models are loaded through the registry, which verifies them first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import bytewax.operators as op
import numpy as np
import onnxruntime as ort
from bytewax.dataflow import Stream, operator
from streamml.onnx_models import INPUT_NAME, LABEL_OUTPUT, PROBABILITIES_OUTPUT, LoadedModel
from streamml.onnx_models.registry import ModelRegistry, RegistryError

__all__ = [
    "ModelLoader",
    "Prediction",
    "PredictionBatch",
    "ScoreBatch",
    "ScoreError",
    "ScoreOutputs",
    "ScoreRequest",
    "Scorer",
    "ScoringConfig",
    "available_providers",
    "score",
]

_DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
_OUTPUTS = [LABEL_OUTPUT, PROBABILITIES_OUTPUT]


def available_providers() -> tuple[str, ...]:
    """Return the execution providers for this machine: CUDA first when present, then CPU."""
    found = ort.get_available_providers()
    if "CUDAExecutionProvider" in found:
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return _DEFAULT_PROVIDERS


@dataclass(frozen=True)
class ScoringConfig:
    """How the scoring operator finds models and runs ONNX Runtime.

    `registry_dir` is where models are loaded from (unless a loader is passed to `score`).
    `providers` are ONNX Runtime execution providers in priority order (use
    `available_providers()` to pick CUDA when onnxruntime-gpu and a GPU are present).
    `intra_op_threads` / `inter_op_threads` size each session's thread pools; 1 suits one
    Bytewax worker per core. `max_batch_rows` bounds the rows of one `run` call.
    `missing_retry_s` is how long an unknown model version is remembered before retrying.
    """

    registry_dir: Path | None = None
    providers: tuple[str, ...] = _DEFAULT_PROVIDERS
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    max_batch_rows: int = 4096
    missing_retry_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.providers:
            raise ValueError("providers must name at least one execution provider")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError(
                f"thread counts must be >= 0 (0 lets ONNX Runtime choose), got intra "
                f"{self.intra_op_threads}, inter {self.inter_op_threads}"
            )
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {self.max_batch_rows}")

    def check_providers(self) -> None:
        """Raise `ValueError` when a configured provider is not available here."""
        found = ort.get_available_providers()
        missing = [p for p in self.providers if p not in found]
        if missing:
            raise ValueError(
                f"execution providers {missing} are not available; this onnxruntime offers "
                f"{found}. Use available_providers() or install onnxruntime-gpu for CUDA"
            )


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One row to score with `model@version`; `features` in the model's contract order."""

    request_id: str
    model: str
    version: str
    features: Sequence[float] | np.ndarray


@dataclass(frozen=True, slots=True)
class ScoreBatch:
    """Rows to score with one model version: `features` is (rows x n_features)."""

    model: str
    version: str
    request_ids: Sequence[str]
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True, slots=True)
class Prediction:
    """The scored row: predicted class and the probability of each class (in `classes` order)."""

    request_id: str
    model: str
    version: str
    label: str
    probabilities: tuple[float, ...]
    classes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "probabilities": dict(zip(self.classes, self.probabilities, strict=True)),
        }


@dataclass(frozen=True, slots=True)
class PredictionBatch:
    """The scored rows of a `ScoreBatch` (rows that failed validation are on the errs stream).

    `labels` is the array of predicted classes as ONNX Runtime returns it (str objects for
    string classes); `probabilities` is float32, rows x classes, columns in `classes` order.
    """

    model: str
    version: str
    request_ids: tuple[str, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.request_ids)

    def rows(self) -> Iterator[Prediction]:
        """Yield one `Prediction` per row."""
        for i, rid in enumerate(self.request_ids):
            yield Prediction(
                rid,
                self.model,
                self.version,
                str(self.labels[i]),
                tuple(float(p) for p in self.probabilities[i]),
                self.classes,
            )


@dataclass(frozen=True, slots=True)
class ScoreError:
    """A row that was not scored, with a machine-readable reason and a human detail."""

    request_id: str | None
    model: str | None
    version: str | None
    reason: str
    detail: str = field(default="")

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ScoreOutputs:
    """Streams returned by `score`."""

    oks: Stream[Prediction | PredictionBatch]
    errs: Stream[ScoreError]


class ModelLoader(Protocol):
    """Anything that returns a verified model for `(name, version)` (e.g. `ModelRegistry.load`)."""

    def __call__(self, name: str, version: str) -> LoadedModel:
        """Load `name@version`; raise `RegistryError` when it is unknown or unsafe."""
        ...


@dataclass(frozen=True)
class _Session:
    session: ort.InferenceSession
    n_features: int
    classes: tuple[str, ...]
    allow_nan: bool


class Scorer:
    """Scores lists of requests with cached ONNX Runtime sessions (the operator's logic)."""

    def __init__(self, config: ScoringConfig, loader: ModelLoader | None = None) -> None:
        if loader is None:
            if config.registry_dir is None:
                raise ValueError(
                    "ScoringConfig.registry_dir is not set and no loader was given; point it at "
                    "a model registry (streamml models list --registry DIR)"
                )
            loader = ModelRegistry(config.registry_dir).load
        config.check_providers()
        self.config = config
        self._loader = loader
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._missing: dict[tuple[str, str], tuple[float, ScoreError]] = {}
        self._lock = threading.Lock()

    def _make_session(self, loaded: LoadedModel) -> _Session:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.intra_op_threads
        opts.inter_op_num_threads = self.config.inter_op_threads
        source: bytes | str = str(loaded.path) if loaded.has_external_data else loaded.model_bytes
        sess = ort.InferenceSession(source, opts, providers=list(self.config.providers))
        inputs = sess.get_inputs()
        outputs = [o.name for o in sess.get_outputs()]
        if inputs[0].name != INPUT_NAME or outputs[:2] != [LABEL_OUTPUT, PROBABILITIES_OUTPUT]:
            raise RegistryError(
                f"{loaded.version.ref}: expected input {INPUT_NAME!r} and outputs "
                f"[{LABEL_OUTPUT!r}, {PROBABILITIES_OUTPUT!r}], got {inputs[0].name!r} / {outputs}"
            )
        n_features = len(loaded.version.contract)
        classes = loaded.version.classes
        if not classes:
            width = sess.get_outputs()[1].shape[1]
            classes = tuple(str(i) for i in range(int(width))) if isinstance(width, int) else ()
        return _Session(sess, n_features, tuple(classes), loaded.version.contract.allow_nan)

    def session(self, model: str, version: str) -> _Session | ScoreError:
        """Return the cached session of `model@version`, loading it on first use."""
        key = (model, version)
        found = self._sessions.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._sessions.get(key)
            if found is not None:
                return found
            miss = self._missing.get(key)
            now = time.monotonic()
            if miss is not None and miss[0] > now:
                return miss[1]
            try:
                loaded = self._loader(model, version)
                made = self._make_session(loaded)
            except RegistryError as exc:
                reason = type(exc).__name__
                err = ScoreError(None, model, version, _reason_of(reason), str(exc))
                self._missing[key] = (now + self.config.missing_retry_s, err)
                return err
            except Exception as exc:
                err = ScoreError(None, model, version, "model_load_failed", repr(exc))
                self._missing[key] = (now + self.config.missing_retry_s, err)
                return err
            self._sessions[key] = made
            self._missing.pop(key, None)
            return made

    def score_one(self, req: ScoreRequest) -> Prediction | ScoreError:
        """Score one request (the low-latency path for a float32 row of the right length)."""
        sess = self._sessions.get((req.model, req.version))
        f = req.features
        if (
            sess is not None
            and type(f) is np.ndarray
            and f.dtype == np.float32
            and f.shape == (sess.n_features,)
        ):
            X = f.reshape(1, sess.n_features)
            if (not sess.allow_nan and np.isfinite(X).all()) or (
                sess.allow_nan and not np.isinf(X).any()
            ):
                try:
                    labels, probs = sess.session.run(_OUTPUTS, {INPUT_NAME: X})
                except Exception as exc:
                    return ScoreError(
                        req.request_id, req.model, req.version, "runtime_error", str(exc)
                    )
                return Prediction(
                    req.request_id,
                    req.model,
                    req.version,
                    str(labels[0]),
                    tuple(probs[0].tolist()),
                    sess.classes,
                )
        out: list[Any] = [None]
        if type(req.model) is str and type(req.version) is str:
            self._score_rows(req.model, req.version, [req], [0], out)
            return out[0]
        return ScoreError(
            req.request_id,
            None,
            None,
            "bad_request",
            f"model and version must be strings, got {req.model!r}, {req.version!r}",
        )

    def _run(self, sess: _Session, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        step = self.config.max_batch_rows
        if X.shape[0] <= step:
            labels, probs = sess.session.run([LABEL_OUTPUT, PROBABILITIES_OUTPUT], {INPUT_NAME: X})
            return np.asarray(labels), np.asarray(probs)
        parts = [
            sess.session.run([LABEL_OUTPUT, PROBABILITIES_OUTPUT], {INPUT_NAME: X[i : i + step]})
            for i in range(0, X.shape[0], step)
        ]
        return (
            np.concatenate([np.asarray(p[0]) for p in parts]),
            np.concatenate([np.asarray(p[1]) for p in parts]),
        )

    def score_batch(self, items: list[Any]) -> list[Prediction | PredictionBatch | ScoreError]:
        """Score a list of `ScoreRequest` / `ScoreBatch` items; returns results in input order."""
        if len(items) == 1 and type(items[0]) is ScoreRequest:
            return [self.score_one(items[0])]
        out: list[Any] = [None] * len(items)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(items):
            if isinstance(item, ScoreRequest):
                if isinstance(item.model, str) and isinstance(item.version, str):
                    groups.setdefault((item.model, item.version), []).append(i)
                else:
                    out[i] = ScoreError(
                        item.request_id,
                        None,
                        None,
                        "bad_request",
                        f"model and version must be strings, got {item.model!r}, {item.version!r}",
                    )
            elif isinstance(item, ScoreBatch):
                out[i] = self._score_matrix(item)
            else:
                out[i] = ScoreError(
                    None,
                    None,
                    None,
                    "bad_request",
                    f"expected ScoreRequest or ScoreBatch, got {type(item).__name__}",
                )
        for (model, version), idx in groups.items():
            self._score_rows(model, version, items, idx, out)
        flat: list[Prediction | PredictionBatch | ScoreError] = []
        for res in out:
            if isinstance(res, list):
                flat.extend(res)
            else:
                flat.append(res)
        return flat

    def _score_rows(
        self, model: str, version: str, items: list[Any], idx: list[int], out: list[Any]
    ) -> None:
        sess = self.session(model, version)
        if isinstance(sess, ScoreError):
            for i in idx:
                out[i] = ScoreError(items[i].request_id, model, version, sess.reason, sess.detail)
            return
        n = sess.n_features
        if len(idx) == 1:
            f = items[idx[0]].features
            if type(f) is np.ndarray and f.dtype == np.float32 and f.shape == (n,):
                X: np.ndarray | None = f.reshape(1, n)
            else:
                X = _fast_matrix([f], n)
        else:
            X = _fast_matrix([items[i].features for i in idx], n)
        good = idx
        if X is None or not _all_valid(X, sess.allow_nan):
            good, vecs = [], []
            for i in idx:
                vec, err = _check_row(items[i].features, n, sess.allow_nan)
                if err is not None:
                    out[i] = ScoreError(items[i].request_id, model, version, err[0], err[1])
                else:
                    good.append(i)
                    vecs.append(vec)
            if not good:
                return
            X = np.stack(vecs)
        try:
            labels, probs = self._run(sess, X)
        except Exception as exc:
            for i in good:
                out[i] = ScoreError(items[i].request_id, model, version, "runtime_error", str(exc))
            return
        classes = sess.classes
        probs_list = probs.tolist()
        labels_list = labels.tolist()
        for j, i in enumerate(good):
            out[i] = Prediction(
                items[i].request_id,
                model,
                version,
                str(labels_list[j]),
                tuple(probs_list[j]),
                classes,
            )

    def _score_matrix(self, batch: ScoreBatch) -> list[Any]:
        model, version = batch.model, batch.version
        ids: Sequence[str] = batch.request_ids
        if not isinstance(model, str) or not isinstance(version, str):
            return [
                ScoreError(rid, None, None, "bad_request", "model/version not strings")
                for rid in ids
            ]
        sess = self.session(model, version)
        if isinstance(sess, ScoreError):
            return [ScoreError(rid, model, version, sess.reason, sess.detail) for rid in ids]
        X = np.asarray(batch.features)
        if X.ndim != 2 or X.shape[0] != len(ids) or X.shape[1] != sess.n_features:
            detail = (
                f"expected a ({len(ids)} x {sess.n_features}) matrix for {len(ids)} request ids, "
                f"got shape {X.shape}"
            )
            return [ScoreError(rid, model, version, "bad_length", detail) for rid in ids]
        if X.dtype.kind not in "iuf":
            detail = f"expected a numeric matrix, got dtype {X.dtype}"
            return [ScoreError(rid, model, version, "not_numeric", detail) for rid in ids]
        if X.dtype != np.float32 or not X.flags.c_contiguous:
            with np.errstate(over="ignore", invalid="ignore"):
                X = np.ascontiguousarray(X, dtype=np.float32)
        errors: list[Any] = []
        if not _all_valid(X, sess.allow_nan):
            ok_rows = _valid_rows(X, sess.allow_nan)
            for r in np.flatnonzero(~ok_rows):
                reason, detail = _bad_values(X[r], sess.allow_nan)
                errors.append(ScoreError(ids[r], model, version, reason, detail))
            X = X[ok_rows]
            ids = [rid for rid, ok in zip(ids, ok_rows.tolist(), strict=True) if ok]
        if not ids:
            return errors
        try:
            labels, probs = self._run(sess, X)
        except Exception as exc:
            return errors + [
                ScoreError(rid, model, version, "runtime_error", str(exc)) for rid in ids
            ]
        result = PredictionBatch(
            model, version, ids if type(ids) is tuple else tuple(ids), labels, probs, sess.classes
        )
        return [result, *errors]


def _reason_of(exc_name: str) -> str:
    return {
        "ModelNotFoundError": "unknown_model",
        "UnsafeModelError": "unsafe_model",
    }.get(exc_name, "model_load_failed")


def _fast_matrix(rows: list[Any], n: int) -> np.ndarray | None:
    try:
        X = np.asarray(rows)
    except (ValueError, TypeError):
        return None
    if X.ndim != 2 or X.shape[1] != n or X.dtype.kind not in "iuf":
        return None
    if X.dtype == np.float32:
        return np.ascontiguousarray(X)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(X, dtype=np.float32)


def _valid_rows(X: np.ndarray, allow_nan: bool) -> np.ndarray:
    if allow_nan:
        return ~np.isinf(X).any(axis=1)
    return np.isfinite(X).all(axis=1)


def _all_valid(X: np.ndarray, allow_nan: bool) -> bool:
    if allow_nan:
        return not bool(np.isinf(X).any())
    return bool(np.isfinite(X).all())


def _bad_values(vec: np.ndarray, allow_nan: bool) -> tuple[str, str]:
    nan = np.flatnonzero(np.isnan(vec)).tolist()
    inf = np.flatnonzero(np.isinf(vec)).tolist()
    if nan and not allow_nan:
        return "nan", f"NaN at feature positions {nan}; this model's contract forbids NaN"
    return "non_finite", f"infinite (or beyond float32 range) at feature positions {inf}"


def _check_row(
    features: Any, n: int, allow_nan: bool
) -> tuple[np.ndarray, None] | tuple[None, tuple[str, str]]:
    try:
        raw = np.asarray(features)
    except (ValueError, TypeError) as exc:
        return None, ("not_numeric", f"features could not be read as numbers: {exc}")
    if raw.ndim != 1 or raw.shape[0] != n:
        return None, ("bad_length", f"expected {n} features, got shape {raw.shape}")
    if raw.dtype.kind not in "iuf":
        return None, ("not_numeric", f"expected {n} numbers, got values of dtype {raw.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        vec = raw.astype(np.float32)
    if not _all_valid(vec[None, :], allow_nan):
        return None, _bad_values(vec, allow_nan)
    return vec, None


def _is_ok(item: Any) -> bool:
    return not isinstance(item, ScoreError)


@operator
def score(
    step_id: str,
    up: Stream[ScoreRequest | ScoreBatch],
    config: ScoringConfig,
    loader: ModelLoader | None = None,
) -> ScoreOutputs:
    """Score requests with ONNX Runtime in batches; split results into `oks` and `errs`.

    `loader` overrides how models are found (default: `ModelRegistry(config.registry_dir).load`).
    Raises `ValueError` at build time for a config that cannot work (no registry, unavailable
    execution provider); every data problem becomes a `ScoreError` on `errs`.
    """
    scorer = Scorer(config, loader)
    results = op.flat_map_batch("score_batch", up, scorer.score_batch)
    split = op.branch("split", results, _is_ok)
    return ScoreOutputs(oks=split.trues, errs=split.falses)
