"""Cascaded (adaptive) classification over the heads of an MRL model.

Embed once, read the smallest head, and escalate to the next head only while the prediction is not
confident enough (the MRL paper's adaptive classification, Kusupati et al. 2022, section 4.2.1):

    cascade = Cascade(dims=[8, 16, 64], thresholds=[0.93, 0.8])
    result = cascade.run({8: logits_8, 16: logits_16, 64: logits_64})   # N x C each
    result.predictions, result.stop_dims, result.confidences

A sample stops at step i when its confidence there is >= thresholds[i]; the last dim always stops.
Confidence is the max softmax probability (the paper's) or the margin between the two largest
softmax probabilities.

Cost is counted two ways, per sample and then averaged:
  honest   the sum of the dims of every head the sample passed through (a sample that stops at 64
           in 8 -> 16 -> 64 paid for 8 + 16 + 64 multiply-adds per class): what lazy heads cost;
  paper    the dim it stopped at (the paper's "expected dimensionality").
Head FLOPs per sample are 2 x m x C summed over the heads passed through (flops.head_flops).

Fitting (`fit_cascade`) on labelled calibration logits, under the constraint
accuracy >= accuracy(full-dim head) - max_drop points:
  "search" (default)  minimises the expected honest cost over the whole threshold vector; a step may
                      also be skipped (its head never computed) or made final (everything stops
                      there: a cap). Lagrangian coordinate descent over the exact candidate set
                      (the calibration confidences), then constrained coordinate descent.
  "greedy"            the paper's method: per step i, the threshold on a grid that maximises the
                      accuracy of the two-stage cascade dims[i] -> dims[i+1] (smallest such
                      threshold), then the smallest cap whose capped cascade meets the constraint.
numpy only: this is the runtime path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DataError, InputError, MRLDeployError, check_number

CONFIDENCES = ("softmax", "margin")
METHODS = ("search", "greedy")
CASCADE_FORMAT = 1
# z of the margin on the accuracy constraint: thresholds fitted to just meet the target on a few
# hundred samples lose more than the target on new data. Two standard deviations, with gains not
# counted, held the 0.5-point target on 100% of bbc-news and 80% of digits re-splits at a tenth
# of the full dim or less (benchmarks/results/cascade.json)
DEFAULT_SAFETY = 2.0


# --- confidence ---------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def predict_with_confidence(logits: np.ndarray, confidence: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, confidence) per row. Confidence: max softmax probability, or the margin
    top-1 minus top-2 of the softmax probabilities (both in [0, 1], comparable across heads)."""
    _check_confidence(confidence)
    probs = softmax(logits)
    predictions = probs.argmax(axis=1)
    if confidence == "softmax" or probs.shape[1] == 1:
        scores = probs[np.arange(len(probs)), predictions]
    else:
        top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
        scores = top2[:, 1] - top2[:, 0]
    return predictions.astype(np.int64), scores


# --- results ------------------------------------------------------------------------------------
@dataclass
class CascadeResult:
    """Per-sample outcome of a cascade run (arrays of length N)."""

    dims: list[int]                  # the cascade's dims, in order
    predictions: np.ndarray          # int64 class index
    stop_dims: np.ndarray            # int64 dim of the head that decided
    confidences: np.ndarray          # float64 confidence at that head
    honest_dims: np.ndarray          # int64 sum of the dims of every head passed through
    num_classes: int

    @property
    def expected_dims(self) -> float:
        """The paper's measure: mean dim of the deciding head."""
        return float(self.stop_dims.mean()) if len(self.stop_dims) else 0.0

    @property
    def expected_honest_dims(self) -> float:
        return float(self.honest_dims.mean()) if len(self.honest_dims) else 0.0

    def head_flops(self, flops_per_head: Mapping[int, int] | None = None) -> float:
        """Mean head FLOPs per sample over the heads passed through (default 2 x m x C each)."""
        per_head = {m: _head_flops(m, self.num_classes, flops_per_head) for m in self.dims}
        cumulative = np.cumsum([per_head[m] for m in self.dims])
        index = np.searchsorted(self.dims, self.stop_dims)
        return float(cumulative[index].mean()) if len(index) else 0.0

    def histogram(self) -> dict[int, float]:
        return stop_histogram(self.stop_dims, self.dims)

    def summary(self, labels: np.ndarray | None = None, flops_per_head: Mapping[int, int] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "samples": int(len(self.predictions)),
            "expected_dims": self.expected_dims,
            "expected_honest_dims": self.expected_honest_dims,
            "head_flops_per_sample": self.head_flops(flops_per_head),
            "stop_histogram": {str(k): v for k, v in self.histogram().items()},
        }
        if labels is not None:
            out["accuracy"] = accuracy(self.predictions, labels)
        return out


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise InputError(f"{len(predictions)} predictions for {len(labels)} labels")
    return float(100.0 * np.mean(predictions == labels)) if len(labels) else 0.0


def stop_histogram(stop_dims: np.ndarray, dims: Sequence[int]) -> dict[int, float]:
    """Fraction of samples decided at each dim (every dim listed, zeros included)."""
    stop_dims = np.asarray(stop_dims)
    total = max(len(stop_dims), 1)
    return {int(m): float(np.count_nonzero(stop_dims == m) / total) for m in dims}


# --- the cascade --------------------------------------------------------------------------------
class Cascade:
    """Thresholds per step over increasing dims; see the module docstring."""

    def __init__(self, dims: Sequence[int], thresholds: Sequence[float | None] = (), confidence: str = "softmax",
                 summary: dict[str, Any] | None = None):
        dims = [int(d) for d in dims]
        if not dims:
            raise InputError("a cascade needs at least one dim")
        if any(d < 1 for d in dims) or any(b <= a for a, b in zip(dims, dims[1:])):
            raise InputError(f"cascade dims must be positive and strictly increasing, got {dims}")
        thresholds = [math.inf if t is None else float(t) for t in thresholds]
        if len(thresholds) != len(dims) - 1:
            raise InputError(f"{len(dims)} cascade dims need {len(dims) - 1} thresholds, got {len(thresholds)}")
        if any(math.isnan(t) for t in thresholds):
            raise InputError("cascade thresholds must not be NaN")
        _check_confidence(confidence)
        self.dims = dims
        self.thresholds = thresholds
        self.confidence = confidence
        self.summary = summary or {}

    @property
    def final_dim(self) -> int:
        return self.dims[-1]

    def run(self, logits: Mapping[int, np.ndarray]) -> CascadeResult:
        """Vectorised over the batch: logits {dim: N x C} for (at least) every cascade dim."""
        stack = _stack_logits(logits, self.dims)
        num_classes = stack[0].shape[1]
        predictions, confidences = zip(*(predict_with_confidence(x, self.confidence) for x in stack))
        predictions, confidences = np.stack(predictions), np.stack(confidences)
        stop_index = _stop_index(confidences, np.array(self.thresholds + [-math.inf]))
        columns = np.arange(predictions.shape[1])
        dims = np.array(self.dims, dtype=np.int64)
        return CascadeResult(
            dims=list(self.dims),
            predictions=predictions[stop_index, columns],
            stop_dims=dims[stop_index],
            confidences=confidences[stop_index, columns],
            honest_dims=np.cumsum(dims)[stop_index],
            num_classes=num_classes,
        )

    def capped(self, max_dim: int) -> "Cascade":
        """The same cascade ending at the largest of its dims <= max_dim (that head always decides)."""
        keep = [d for d in self.dims if d <= max_dim]
        if not keep:
            raise InputError(f"no cascade dim <= {max_dim} (dims {self.dims})")
        return Cascade(keep, self.thresholds[: len(keep) - 1], self.confidence)

    # --- persistence (the manifest's `cascade` field) ---------------------------------------
    def to_json(self) -> dict[str, Any]:
        """JSON-safe: a threshold of +inf (never stop there) is written as null."""
        return {
            "format": CASCADE_FORMAT,
            "confidence": self.confidence,
            "dims": list(self.dims),
            "thresholds": [None if math.isinf(t) and t > 0 else float(t) for t in self.thresholds],
            **self.summary,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Cascade":
        if not isinstance(data, Mapping) or "dims" not in data or "thresholds" not in data:
            raise MRLDeployError("the cascade entry of the manifest is malformed: run `mrl-deploy calibrate` again")
        summary = {k: v for k, v in data.items() if k not in ("format", "confidence", "dims", "thresholds")}
        return cls(data["dims"], data["thresholds"], data.get("confidence", "softmax"), summary)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str = "the artifact") -> "Cascade":
        data = manifest.get("cascade")
        if not data:
            raise MRLDeployError(
                f"{where} has no calibrated cascade: run `mrl-deploy calibrate DIR DATA` first"
            )
        return cls.from_json(data)

    def __repr__(self) -> str:
        steps = ", ".join(f"{d}@{t:.4g}" for d, t in zip(self.dims, self.thresholds))
        return f"Cascade([{steps}{', ' if steps else ''}{self.final_dim}], confidence={self.confidence!r})"


# --- fitting ------------------------------------------------------------------------------------
@dataclass
class FitResult:
    cascade: Cascade
    method: str
    feasible: bool                   # met the accuracy constraint on the calibration data
    calibration: dict[str, Any] = field(default_factory=dict)


def fit_cascade(logits: Mapping[int, np.ndarray], labels: np.ndarray, *, max_drop: float = 0.5,
                confidence: str = "softmax", method: str = "search", dims: Sequence[int] | None = None,
                flops_per_head: Mapping[int, int] | None = None, safety: float = DEFAULT_SAFETY,
                count_gains: bool = False) -> FitResult:
    """Fit thresholds on calibration logits {dim: N x C} and labels so that the cascade's accuracy
    is >= the largest head's accuracy minus `max_drop` points at the smallest expected honest cost.
    `safety` > 0 demands that many standard deviations of margin on the accuracy difference, and
    count_gains=False lets only losses against the full-dim head count (see _Problem.credit), so
    that the constraint still holds on new data (the defaults; safety=0, count_gains=True is the
    plain constraint on calibration accuracy)."""
    if method not in METHODS:
        raise InputError(f"unknown cascade fitting method {method!r}; choose from {', '.join(METHODS)}")
    check_number(max_drop, "--max-drop (points)", 0, 100)
    check_number(safety, "--safety (standard deviations)", 0, 10)
    dims = sorted(int(d) for d in (dims if dims is not None else logits))
    stack = _stack_logits(logits, dims)
    labels = check_labels(labels, len(stack[0]), stack[0].shape[1])
    problem = _Problem.build(stack, labels, dims, confidence, safety, count_gains)
    target = problem.target_correct(max_drop)
    if method == "greedy":
        thresholds = _fit_greedy(problem, target)
    else:
        thresholds = _fit_search(problem, target)
    cascade = problem.to_cascade(thresholds, confidence)
    result = cascade.run({d: logits[d] for d in cascade.dims})
    calibration = {
        **result.summary(labels, flops_per_head),
        "full_dim": dims[-1],
        "full_accuracy": accuracy(problem.predictions[-1], labels),
        "target_accuracy": accuracy(problem.predictions[-1], labels) - float(max_drop),
        "max_drop": float(max_drop),
        "safety": float(safety),
        "count_gains": bool(count_gains),
    }
    feasible = problem.evaluate(_full_vector(problem, cascade))[1] >= target
    return FitResult(cascade, method, feasible, calibration)


def _full_vector(problem: "_Problem", cascade: Cascade) -> np.ndarray:
    """The cascade as a threshold vector over all of the problem's dims (+inf: skipped)."""
    thresholds = np.full(problem.steps, math.inf)
    for dim, threshold in zip(cascade.dims, cascade.thresholds + [-math.inf]):
        thresholds[int(np.flatnonzero(problem.dims == dim)[0])] = threshold
    return thresholds


def check_labels(labels: Any, count: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be one integer per sample, got shape {labels.shape}")
    if len(labels) != count:
        raise DataError(f"{len(labels)} labels for {count} samples")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(np.equal(np.mod(labels, 1), 0)):
            raise DataError(f"labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels must lie in 0..{num_classes - 1} (the heads have {num_classes} classes); "
            f"got {int(labels.min())}..{int(labels.max())}"
        )
    return labels.astype(np.int64)


@dataclass
class _Problem:
    """Per-head predictions, confidences and correctness on the calibration set (K x N)."""

    dims: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray
    correct: np.ndarray
    confidence: str = "softmax"
    order: np.ndarray | None = None     # per step, sample indices by decreasing confidence
    safety: float = 0.0                 # z of the margin on the accuracy constraint (see credit)
    count_gains: bool = True            # gains on the full-dim head offset losses (see credit)
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.order is None:
            self.order = np.argsort(-self.confidences, axis=1, kind="stable")
        # where a head and the full-dim head disagree on correctness: the samples whose count
        # decides the accuracy difference, and its noise
        self.changed = self.correct != self.correct[-1][None, :]

    def credit(self, correct, changed):
        """What the accuracy constraint is checked on: the correct count, by default with the gains
        (samples the cascade gets right and the full-dim head gets wrong) left out, less `safety`
        standard deviations of the accuracy difference to the full-dim head (McNemar: the
        variance of losses - gains is about losses + gains).

        Why: thresholds chosen to just meet the target on a few hundred calibration samples lose
        more than the target on new data, mostly by trading real losses for lucky gains; not
        counting gains and keeping a margin holds the constraint on held-out splits
        (benchmarks/cascade.py). With count_gains and safety 0 this is plain accuracy."""
        correct = np.asarray(correct, dtype=np.float64)
        changed = np.asarray(changed, dtype=np.float64)
        credit = correct
        if not self.count_gains:
            full = float(self.correct[-1].sum())
            credit = correct - (correct - full + changed) / 2      # = full - losses
        return credit - self.safety * np.sqrt(changed)

    @classmethod
    def build(cls, stack: list[np.ndarray], labels: np.ndarray, dims: Sequence[int], confidence: str,
              safety: float = 0.0, count_gains: bool = True) -> "_Problem":
        predictions, confidences = zip(*(predict_with_confidence(x, confidence) for x in stack))
        predictions = np.stack(predictions)
        return cls(np.array(dims, dtype=np.int64), predictions, np.stack(confidences), predictions == labels[None, :],
                   confidence, safety=float(safety), count_gains=bool(count_gains), num_classes=stack[0].shape[1])

    @property
    def n(self) -> int:
        return self.predictions.shape[1]

    @property
    def steps(self) -> int:
        return len(self.dims)

    def target_correct(self, max_drop: float) -> float:
        """The credit (correct count, less the safety margin) that keeps accuracy >= full -
        max_drop points; with safety 0 the fewest correct samples."""
        full = int(self.correct[-1].sum())
        return max(0.0, full - max_drop / 100.0 * self.n - 1e-9)

    def evaluate(self, thresholds: np.ndarray) -> tuple[int, float]:
        """(total honest cost in dims, credit) for a full threshold vector (K, last -inf); +inf at
        a step means the step is skipped: its head is never computed and costs nothing."""
        stop = _stop_index(self.confidences, thresholds)
        active = np.where(np.isposinf(thresholds), 0, self.dims)
        cost = int(np.cumsum(active)[stop].sum())
        columns = np.arange(self.n)
        return cost, float(self.credit(self.correct[stop, columns].sum(), self.changed[stop, columns].sum()))

    def candidates(self, thresholds: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every distinct outcome of changing thresholds[step] with the others fixed:
        (threshold values, total cost, credit), the first candidate being 'skip' (+inf)."""
        # counts[0] correct, counts[1] changed against the full-dim head, per (step, sample)
        counts, n = np.stack([self.correct, self.changed]).astype(np.int64), self.n
        stops = self.confidences >= thresholds[:, None]
        stops[-1] = True
        cumulative = np.cumsum(np.where(np.isposinf(thresholds), 0, self.dims))
        columns = np.arange(n)
        reach = ~stops[:step].any(axis=0) if step else np.ones(n, dtype=bool)
        # samples stopping before `step` are untouched by it
        early = np.argmax(stops[:, ~reach], axis=0)
        fixed_cost = int(cumulative[early].sum())
        fixed_counts = counts[:, early, columns[~reach]].sum(axis=1)
        # the others, in decreasing confidence at `step`, and what happens to them past `step`
        # with the other thresholds as they are
        order = self.order[step][reach[self.order[step]]]
        values = self.confidences[step, order]
        tail = step + 1 + np.argmax(stops[step + 1:, order], axis=0)
        before = int(cumulative[step - 1]) if step else 0
        tail_cost = cumulative[tail] - cumulative[step] + before
        tail_counts = counts[:, tail, order]
        base_cost = fixed_cost + int(tail_cost.sum())
        base_counts = fixed_counts + tail_counts.sum(axis=1)
        count = len(order)
        if not count:
            return np.array([math.inf]), np.array([base_cost]), self.credit(base_counts[:1], base_counts[1:])
        # active with threshold c: the reaching samples with confidence >= c stop here; an active
        # step pays its dim for every reaching sample, even those that go on
        delta_cost = np.cumsum(before - tail_cost)
        delta_counts = np.cumsum(counts[:, step, order] - tail_counts, axis=1)
        # one candidate per run of equal confidences (stop all of the run or none of it); the
        # threshold halfway to the next lower confidence generalises better than the value itself
        ends = np.flatnonzero(np.r_[values[1:] != values[:-1], True])
        next_lower = np.r_[values[1:], -math.inf][ends]
        last = np.isinf(next_lower)
        chosen = np.where(last, -math.inf, (values[ends] + np.where(last, 0.0, next_lower)) / 2)
        costs = base_cost + count * int(self.dims[step]) + delta_cost[ends]
        totals = np.c_[base_counts, base_counts[:, None] + delta_counts[:, ends]]
        return np.r_[math.inf, chosen], np.r_[base_cost, costs], self.credit(totals[0], totals[1])

    def to_cascade(self, thresholds: np.ndarray, confidence: str) -> Cascade:
        """Drop skipped steps (+inf) and everything after the first always-stop step (-inf)."""
        # confidence is never below 1 / C (softmax) or 0 (margin): a threshold there stops everyone
        floor = 1.0 / self.num_classes if self.confidence == "softmax" and self.num_classes else 0.0
        dims, kept = [], []
        for dim, threshold in zip(self.dims.tolist(), thresholds.tolist()):
            threshold = -math.inf if threshold <= floor else threshold
            if math.isinf(threshold) and threshold > 0:
                continue
            dims.append(dim)
            if math.isinf(threshold):
                break
            kept.append(threshold)
        return Cascade(dims, kept[: len(dims) - 1], confidence)


def _fit_search(problem: _Problem, target: int, pair_starts: int = 2) -> np.ndarray:
    """Minimise total honest cost subject to correct >= target over the whole threshold vector."""
    steps = problem.steps
    start = np.full(steps, math.inf)
    start[-1] = -math.inf   # the full-dim head alone: accuracy == full accuracy >= target
    if steps == 1:
        return start
    starts = [start, _fit_greedy(problem, target)]
    # Lagrangian relaxation: min cost - lam * correct for lam from cheap to accuracy-at-any-price;
    # each minimiser is a point on the cost/accuracy frontier, and a start for the constrained pass.
    scale = float(problem.dims.sum())
    for lam in scale * np.logspace(-2, 3, 16):
        starts.append(_coordinate_descent(problem, start.copy(), lambda c, k: c - lam * k))
    polished: dict[tuple, tuple] = {}
    for candidate in starts:
        candidate = _coordinate_descent(problem, candidate.copy(), None, target)
        cost, correct = problem.evaluate(candidate)
        if correct >= target:
            polished.setdefault(tuple(candidate.tolist()), (cost, -correct))
    # pair moves are the expensive part: only from the few best distinct points
    ranked = sorted(polished.items(), key=lambda item: item[1])[:pair_starts]
    best, best_key = start, problem.evaluate(start)
    best_key = (best_key[0], -best_key[1])
    for candidate, _ in ranked:
        candidate = _pair_descent(problem, np.array(candidate), target)
        cost, correct = problem.evaluate(candidate)
        if correct >= target and (cost, -correct) < best_key:
            best, best_key = candidate, (cost, -correct)
    return best


def _coordinate_descent(problem: _Problem, thresholds: np.ndarray, objective, target: int | None = None,
                        max_sweeps: int = 50) -> np.ndarray:
    """One threshold at a time, exactly optimised over its candidates, until nothing changes.
    With `target`: minimise cost among candidates that keep correct >= target (a candidate
    below target is only taken if the current point is itself below target and it improves)."""
    for _ in range(max_sweeps):
        changed = False
        for step in range(problem.steps - 1):
            values, costs, corrects = problem.candidates(thresholds, step)
            current_cost, current_correct = problem.evaluate(thresholds)
            if target is None:
                scores = objective(costs.astype(np.float64), corrects.astype(np.float64))
                current = objective(float(current_cost), float(current_correct))
                pick = _argmin_with_ties(scores, corrects)
                better = scores[pick] < current - 1e-9
            else:
                feasible = corrects >= target
                if not feasible.any():
                    continue
                masked = np.where(feasible, costs, np.iinfo(np.int64).max)
                pick = _argmin_with_ties(masked, corrects)
                better = (current_correct < target) or (costs[pick], -corrects[pick]) < (current_cost, -current_correct)
            if better and values[pick] != thresholds[step]:
                thresholds[step] = values[pick]
                changed = True
        if not changed:
            break
    return thresholds


def _pair_descent(problem: _Problem, thresholds: np.ndarray, target: int, outer: int = 64,
                  max_rounds: int = 20) -> np.ndarray:
    """Escape the corners where single moves are stuck (cheaper at one step only by losing accuracy
    that another step must win back): move two thresholds at once, the outer one over (a quantile
    sample of) its candidates and the inner one exactly, then polish with single moves."""
    steps = problem.steps - 1
    if steps < 2:
        return thresholds
    for _ in range(max_rounds):
        current = problem.evaluate(thresholds)
        if current[1] < target:
            return thresholds
        best_key, best = (current[0], -current[1]), None
        for i in range(steps):
            values, _, _ = problem.candidates(thresholds, i)
            if len(values) > outer:
                values = values[np.unique(np.linspace(0, len(values) - 1, outer).round().astype(int))]
            for value in values:
                trial = thresholds.copy()
                trial[i] = value
                for j in range(steps):
                    if j == i:
                        continue
                    inner, costs, corrects = problem.candidates(trial, j)
                    feasible = corrects >= target
                    if not feasible.any():
                        continue
                    masked = np.where(feasible, costs, np.iinfo(np.int64).max)
                    pick = _argmin_with_ties(masked, corrects)
                    key = (int(costs[pick]), -float(corrects[pick]))
                    if key < best_key:
                        best_key, best = key, trial.copy()
                        best[j] = inner[pick]
        if best is None:
            return thresholds
        thresholds = _coordinate_descent(problem, best, None, target)
    return thresholds


def _argmin_with_ties(scores: np.ndarray, corrects: np.ndarray) -> int:
    """Lowest score; among ties the most correct; then the first (the most conservative)."""
    best = np.flatnonzero(scores == scores.min())
    return int(best[np.argmax(corrects[best])])


def greedy_grid(confidence: str) -> np.ndarray:
    """The paper's threshold grid: np.linspace(0.1, 1, 100) on the max softmax probability."""
    return np.linspace(0.1, 1.0, 100) if confidence == "softmax" else np.linspace(0.0, 1.0, 100)


def _fit_greedy(problem: _Problem, target: int, grid: np.ndarray | None = None) -> np.ndarray:
    """The paper's per-step greedy grid search (official code, 'Cascade Performance Paper'
    notebook): thresholds[i] = smallest grid value maximising the accuracy of the two-stage
    cascade dims[i] -> dims[i+1]; then the smallest cap meeting the target (the paper reads the
    capped cascades off as a table)."""
    grid = greedy_grid(problem.confidence) if grid is None else grid
    steps = problem.steps
    thresholds = np.full(steps, -math.inf)
    for i in range(steps - 1):
        stop = problem.confidences[i][None, :] >= grid[:, None]
        pair_correct = np.where(stop, problem.correct[i][None, :], problem.correct[i + 1][None, :]).sum(axis=1)
        thresholds[i] = grid[int(np.flatnonzero(pair_correct == pair_correct.max())[0])]
    for cap in range(steps):
        capped = thresholds.copy()
        capped[cap] = -math.inf
        if problem.evaluate(capped)[1] >= target:
            return capped
    return thresholds


# --- helpers ------------------------------------------------------------------------------------
def _stop_index(confidences: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the first step whose confidence reaches its threshold (the last always stops)."""
    stops = confidences >= np.asarray(thresholds, dtype=np.float64)[:, None]
    stops[-1] = True
    return np.argmax(stops, axis=0)


def _stack_logits(logits: Mapping[int, np.ndarray], dims: Sequence[int]) -> list[np.ndarray]:
    if not isinstance(logits, Mapping):
        raise InputError("cascade logits must be a dict {dim: N x C array}")
    missing = [d for d in dims if d not in logits]
    if missing:
        raise InputError(f"no logits for dims {missing} (have {sorted(logits)})")
    stack = [np.asarray(logits[d]) for d in dims]
    shapes = {x.shape for x in stack}
    if any(x.ndim != 2 for x in stack) or len(shapes) != 1:
        raise InputError(f"cascade logits must all be N x C arrays of one shape, got {sorted(shapes)}")
    if stack[0].shape[1] < 1:
        raise InputError("cascade logits have no classes")
    for dim, x in zip(dims, stack):
        if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
            raise InputError(f"logits at dim {dim} contain NaN, infinite or non-numeric values")
    return stack


def _head_flops(dim: int, num_classes: int, flops_per_head: Mapping[int, int] | None) -> int:
    if flops_per_head:
        value = flops_per_head.get(dim, flops_per_head.get(str(dim)))  # type: ignore[arg-type]
        if value is not None:
            return int(value)
    return 2 * dim * num_classes


def _check_confidence(confidence: str) -> None:
    if confidence not in CONFIDENCES:
        raise InputError(f"unknown confidence {confidence!r}; choose from {', '.join(CONFIDENCES)}")


# --- artifacts: run the heads once, calibrate, classify ----------------------------------------
def artifact_logit_dims(artifact: Any) -> list[int]:
    """The artifact's head dims, or a one-line error for an artifact exported without heads."""
    dims = artifact.logit_dims
    if not dims:
        raise InputError(
            f"{artifact.path} has no classifier heads (no logits outputs): export a model with heads "
            "(an MRL classifier, e.g. from `mrl-deploy train`) to classify with it"
        )
    return dims


def head_flops_of(artifact: Any) -> dict[int, int]:
    heads = (artifact.manifest.get("flops") or {}).get("heads") or {}
    return {int(k): int(v) for k, v in heads.items()}


def run_heads(artifact: Any, inputs: Any, dims: Sequence[int] | None = None, **run_options: Any) -> tuple[dict[int, np.ndarray], float]:
    """Every head's logits from one encoder pass per batch (the heads are in the graph):
    ({dim: N x C float32}, seconds)."""
    import time

    known = artifact_logit_dims(artifact)
    dims = list(dims) if dims is not None else known
    missing = [d for d in dims if d not in known]
    if missing:
        raise InputError(f"{artifact.path} has no heads at dims {missing}; it has heads at {known}")
    # start the session first: its load time is not per-sample latency
    artifact.runtime(run_options.get("runtime"), run_options.get("variant", "fp32"), run_options.get("threads"))
    started = time.perf_counter()
    outputs = artifact.run(inputs, [f"logits_{d}" for d in dims], **run_options)
    seconds = time.perf_counter() - started
    return {d: np.asarray(outputs[f"logits_{d}"], dtype=np.float32) for d in dims}, seconds


def calibrate_artifact(directory: Any, inputs: Any, labels: np.ndarray, *, max_drop: float = 0.5,
                       confidence: str = "softmax", method: str = "search", safety: float = DEFAULT_SAFETY,
                       count_gains: bool = False, data: dict[str, Any] | None = None,
                       **run_options: Any) -> dict[str, Any]:
    """Fit the cascade on labelled calibration data, both methods (the chosen one is saved), and
    write thresholds + the calibration summary into the artifact's manifest atomically."""
    from datetime import datetime, timezone

    from .artifact import Artifact
    from .manifest import update_manifest

    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    artifact = Artifact.load(directory)
    logits, seconds = run_heads(artifact, inputs, **run_options)
    num_classes = next(iter(logits.values())).shape[1]
    labels = check_labels(labels, len(next(iter(logits.values()))), num_classes)
    flops = head_flops_of(artifact)
    fits = {m: fit_cascade(logits, labels, max_drop=max_drop, confidence=confidence, method=m, flops_per_head=flops,
                           safety=safety, count_gains=count_gains)
            for m in METHODS}
    chosen = fits[method]
    methods = {
        m: {"dims": f.cascade.dims, "thresholds": f.cascade.to_json()["thresholds"], "feasible": f.feasible,
            **f.calibration}
        for m, f in fits.items()
    }
    summary = {
        "method": method,
        "feasible": chosen.feasible,
        "max_drop": float(max_drop),
        "safety": float(safety),
        "count_gains": bool(count_gains),
        "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data or {},
        "calibration": chosen.calibration,
        "methods": methods,
        "encoder_seconds": seconds,
    }
    cascade = Cascade(chosen.cascade.dims, chosen.cascade.thresholds, confidence, summary)
    update_manifest(artifact.path, cascade=cascade.to_json())
    return cascade.to_json()


def classify_artifact(artifact: Any, inputs: Any, labels: np.ndarray | None = None, *, dim: int | None = None,
                      cascade: Cascade | None = None, **run_options: Any) -> dict[str, Any]:
    """Predictions with per-sample stop dim and confidence, and (with labels) the report:
    accuracy, stop histogram, expected dims (final and honest), head and encoder FLOPs, latency.
    With `cascade`, every head the cascade uses is computed in one graph run; with `dim`, one head."""
    import time

    mode = "fixed" if cascade is None else "cascade"
    if cascade is None:
        dims = artifact_logit_dims(artifact)
        dim = dims[-1] if dim is None else int(dim)
        if dim not in dims:
            raise InputError(f"{artifact.path} has no head at dim {dim}; it has heads at {dims}")
        cascade = Cascade([dim], [], "softmax")
    logits, encoder_seconds = run_heads(artifact, inputs, cascade.dims, **run_options)
    started = time.perf_counter()
    result = cascade.run(logits)
    cascade_seconds = time.perf_counter() - started
    count = len(result.predictions)
    flops = artifact.manifest.get("flops") or {}
    report: dict[str, Any] = {
        "mode": mode,
        "dims": cascade.dims,
        "thresholds": cascade.to_json()["thresholds"],
        "confidence": cascade.confidence,
        **result.summary(None if labels is None else check_labels(labels, count, result.num_classes),
                         head_flops_of(artifact)),
        "encoder_flops_per_sample": flops.get("encoder"),
        "flops_unit": flops.get("unit"),
        "seconds": {"encoder_and_heads": encoder_seconds, "cascade": cascade_seconds},
        "ms_per_sample": 1000.0 * (encoder_seconds + cascade_seconds) / max(count, 1),
    }
    return {"report": report, "result": result}


SPLITS = ("calibration", "test", "all")


def load_classification_data(spec: Any, artifact: Any, split: str | None = None,
                             default_split: str = "test") -> dict[str, Any]:
    """DATA for calibrate / classify: `digits`, `bbc-news` or a .npz with x and y, or unlabelled
    inputs for the artifact (.npy images / tensors, .txt texts, .npz without y).

    Labelled data goes through data.data_for_model with the artifact's training_data: the model's
    own training data is split exactly as it was trained (calibrate takes the calibration split,
    classify the test split, so neither touches training samples and the test split never takes
    part in calibration); any other data is used whole, and `split` on it is an error.
    Returns {x, y or None, name, split, samples, description, ...usage}."""
    from pathlib import Path

    from .artifact import load_inputs

    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    text = str(spec)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".txt") or (suffix == ".npz" and path.is_file() and not _npz_has_labels(path)):
        if split not in (None, "all"):
            raise InputError(f"--split {split} applies only to the model's own (labelled) training data; "
                             f"{text} holds unlabelled inputs, used whole")
        x = load_inputs(path, artifact)
        count = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        return {"x": x, "y": None, "name": text, "split": "all", "samples": count,
                "description": f"all of {text}, {count} samples (unlabelled)"}
    dataset, usage = _dataset(text, artifact, split, default_split)
    return {"x": dataset.x, "y": np.asarray(dataset.y), "labels": dataset.labels, **usage}


def _npz_has_labels(path: Any) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return "y" in data
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def _dataset(spec: str, artifact: Any, split: str | None, default_split: str):
    from .data import data_for_model

    return data_for_model(spec, artifact.manifest.get("training_data"), split, default_split)
