"""The accuracy a model must reach to be blessed (and pushed).

A chance-level model should not be served. By default the bar is the
accuracy of always predicting the training split's most frequent class (or
min_accuracy, if higher), so a model is blessed only if it learnt something.
The class counts come from listing the image folders when the pipeline is
built; TFRecord inputs, tfds: and folders a cluster cannot list here
(gs://, Kubeflow runtime parameters) have no counts, and then min_accuracy
alone is the bar -- the result says which rule applied.
"""
from __future__ import annotations

from typing import Any, Dict

from tfx_transfer.pipeline.config import RunConfig
from tfx_transfer.pipeline.preflight import majority_baseline

# A model that ties the majority class has not beaten it (TFMA passes ties).
MARGIN = 1e-6


def threshold(config: RunConfig) -> Dict[str, Any]:
    """{"threshold", "rule", and the majority class and its accuracy when known}."""
    ev = config.evaluation
    out: Dict[str, Any] = {"min_accuracy": ev.min_accuracy}
    majority = majority_baseline(config.data.data) if ev.bless_over_majority else None
    if majority is None:
        out["threshold"] = ev.min_accuracy
        out["rule"] = (f"accuracy >= min_accuracy {ev.min_accuracy:.2%}"
                       + ("" if not ev.bless_over_majority else
                          " (class counts unknown before the run: majority class not checked)"))
        return out
    cls, acc = majority
    out.update(majority_class=cls, majority_accuracy=acc)
    if acc + MARGIN > ev.min_accuracy:
        out["threshold"] = min(1.0, acc + MARGIN)
        out["rule"] = f"accuracy above {acc:.2%}, always predicting '{cls}' (most frequent class)"
    else:
        out["threshold"] = ev.min_accuracy
        out["rule"] = f"accuracy >= min_accuracy {ev.min_accuracy:.2%}"
    return out
