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

    core.py       the cascade: confidences, Cascade.run, the results and their costs
    fit.py        the threshold optimiser (fit_cascade: search and greedy)
    artifacts.py  the glue to artifacts and data: run the heads once, calibrate, classify
"""

from __future__ import annotations

from .artifacts import (
    SPLITS, artifact_logit_dims, calibrate_artifact, classify_artifact, head_flops_of, load_classification_data,
    run_heads,
)
from .core import (
    CASCADE_FORMAT, CONFIDENCES, Cascade, CascadeResult, accuracy, predict_with_confidence, softmax, stop_histogram,
)
from .fit import DEFAULT_SAFETY, METHODS, FitResult, check_labels, fit_cascade, greedy_grid

__all__ = [
    "CASCADE_FORMAT", "CONFIDENCES", "Cascade", "CascadeResult", "DEFAULT_SAFETY", "FitResult", "METHODS", "SPLITS",
    "accuracy", "artifact_logit_dims", "calibrate_artifact", "check_labels", "classify_artifact", "fit_cascade",
    "greedy_grid", "head_flops_of", "load_classification_data", "predict_with_confidence", "run_heads", "softmax",
    "stop_histogram",
]
