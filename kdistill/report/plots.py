"""The report's plots: each function draws one small matplotlib figure and returns it as PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg backend directly, never
through ``pyplot``: no global figure state, no display needed, nothing left open between calls.
Functions return None when the data they need is absent (older ``results.json`` files).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from kdistill.report.format import ROLE_LABELS

DPI = 100
CALIBRATION_BINS = 15  # the binning of kdistill.eval.metrics.expected_calibration_error
ROLE_COLORS = {"teacher": "#4c72b0", "member": "#8c9fc9", "baseline": "#dd8452", "distilled": "#55a868"}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def training_curves(history: Sequence[dict], title: str, kept_epoch: int | None = None) -> bytes | None:
    """Loss (train, validation) and validation metrics per epoch, from a checkpoint's history; a
    dashed line marks the epoch kept (selected on validation)."""
    epochs = [entry.get("epoch", i + 1) for i, entry in enumerate(history)]
    if not epochs:
        return None
    figure = _figure(5.6, 2.4)
    loss_axes, metric_axes = figure.subplots(1, 2)
    _plot_keys(loss_axes, history, epochs, ("train_loss", "val_loss"))
    loss_axes.set(xlabel="epoch", ylabel="loss")
    _plot_keys(metric_axes, history, epochs, ("val_accuracy", "val_balanced_accuracy", "val_auc"))
    metric_axes.set(xlabel="epoch", ylabel="validation")
    if kept_epoch is not None:
        for axes in (loss_axes, metric_axes):
            axes.axvline(kept_epoch, color="grey", linestyle="--", linewidth=1)
    figure.suptitle(title, fontsize=10)
    return _png(figure)


def _plot_keys(axes, history: Sequence[dict], epochs: list, keys: Sequence[str]) -> None:
    for key in keys:
        values = [entry.get(key) for entry in history]
        if any(v is not None for v in values):
            axes.plot(epochs, [np.nan if v is None else v for v in values], marker="o", markersize=3,
                      label=key.replace("_", " "))
    if axes.lines:
        axes.legend(fontsize=7)
    axes.grid(alpha=0.3)


def confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> bytes:
    """Counts of true class (rows) against predicted class (columns)."""
    counts = np.asarray(matrix)
    size = max(2.4, 0.5 * len(classes) + 1.6)
    figure = _figure(size, size)
    axes = figure.subplots()
    axes.imshow(counts, cmap="Blues")
    ticks = range(len(classes))
    axes.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title=title)
    axes.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
    axes.set_yticklabels(classes, fontsize=8)
    middle = counts.max() / 2 if counts.size else 0
    for (i, j), n in np.ndenumerate(counts):
        axes.text(j, i, str(n), ha="center", va="center", fontsize=9,
                  color="white" if n > middle else "black")
    axes.title.set_fontsize(9)
    return _png(figure)


def roc_curves(labels: Sequence[int], probabilities: dict[str, Sequence[Sequence[float]]],
               positive_index: int) -> bytes | None:
    """ROC of the positive class for every model, on the same test images."""
    y = np.asarray(labels) == positive_index
    if not probabilities or y.all() or not y.any():
        return None
    figure = _figure(4.4, 3.6)
    axes = figure.subplots()
    for model_id, probs in probabilities.items():
        false_pos, true_pos, _ = roc_curve(y, np.asarray(probs)[:, positive_index])
        axes.plot(false_pos, true_pos, linewidth=1.2, label=model_id)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC on the test split")
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(alpha=0.3)
    return _png(figure)


def reliability_diagram(labels: Sequence[int], probabilities: Sequence[Sequence[float]], title: str,
                        ece: float | None) -> bytes:
    """Accuracy against top-label confidence in equal-width bins; bar width shows the bin, the
    diagonal is perfect calibration."""
    probs = np.asarray(probabilities, dtype=float)
    confidence, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, CALIBRATION_BINS - 1)
    figure = _figure(3.0, 3.0)
    axes = figure.subplots()
    for b in range(CALIBRATION_BINS):
        members = which == b
        if members.any():
            axes.bar(edges[b], correct[members].mean(), width=edges[1], align="edge",
                     color="#4c72b0", edgecolor="white", alpha=0.85)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ece_text = "" if ece is None else f" (ECE {ece:.3f})"
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title + ece_text)
    axes.title.set_fontsize(9)
    return _png(figure)


def accuracy_vs_latency(rows: Sequence[dict], summary: dict | None = None) -> bytes | None:
    """Test accuracy against batch-1 CPU latency per role, mean and std across seeds. The accuracy
    mean and std come from ``summary`` when given, so the chart shows the table's figures."""
    groups = {}
    for row in rows:
        if row.get("accuracy") is not None and row.get("latency_ms_batch1") is not None:
            groups.setdefault(row.get("role", "?"), []).append(row)
    if not groups:
        return None
    figure = _figure(4.4, 3.2)
    axes = figure.subplots()
    for role, members in groups.items():
        accuracy_mean, accuracy_std = _mean_std([r["accuracy"] for r in members],
                                                ((summary or {}).get(role) or {}).get("accuracy"))
        latency_mean, latency_std = _mean_std([r["latency_ms_batch1"] for r in members])
        label = ROLE_LABELS.get(role, role) + (f" (n={len(members)})" if len(members) > 1 else "")
        axes.errorbar(latency_mean, 100 * accuracy_mean, xerr=latency_std, yerr=100 * accuracy_std,
                      fmt="o", capsize=4, color=ROLE_COLORS.get(role), label=label)
    axes.set_xscale("log")
    axes.set(xlabel="latency, batch 1 (ms, log scale)", ylabel="test accuracy (%)",
             title="Accuracy vs CPU latency")
    axes.title.set_fontsize(10)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3, which="both")
    return _png(figure)


def _mean_std(values: Sequence[float], summarized: dict | None = None) -> tuple[float, float]:
    """Mean and sample std (0 for one value), or the summary's figures when it has them."""
    if summarized and summarized.get("mean") is not None:
        return summarized["mean"], summarized.get("std") or 0.0
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def student_search(candidates: Sequence[dict], metric: str, best_label: str | None = None,
                   latency_bound: float | None = None) -> bytes | None:
    """Validation ``metric`` against batch-1 latency for every trained candidate of a student search;
    marker area grows with the parameter count, the Pareto front is joined, the winner starred, the
    reference student labelled and the latency bound dashed (search.png and the run's report)."""
    trained = [c for c in candidates if c.get("status") == "trained"
               and c.get("score") is not None and c.get("latency_ms") is not None]
    if not trained:
        return None
    figure = _figure(5.6, 3.8)
    axes = figure.subplots()
    largest = max(c.get("params") or 1 for c in trained)
    sizes = [12 + 140 * (c.get("params") or 0) / largest for c in trained]
    axes.scatter([c["latency_ms"] for c in trained], [c["score"] for c in trained], s=sizes,
                 color="#8c8c8c", alpha=0.6, label="candidate (area: params)")
    front = sorted((c for c in trained if c.get("pareto")), key=lambda c: c["latency_ms"])
    if front:
        axes.plot([c["latency_ms"] for c in front], [c["score"] for c in front], marker="o", markersize=4,
                  color="#c44e52", label="Pareto front")
    middle = (min(c["latency_ms"] for c in trained) + max(c["latency_ms"] for c in trained)) / 2
    for c in trained:
        if c.get("label") == best_label:
            axes.scatter([c["latency_ms"]], [c["score"]], marker="*", s=220, color="#55a868",
                         edgecolors="black", linewidths=0.6, zorder=3, label="chosen")
        if c.get("pareto") or c.get("reference") or c.get("label") == best_label:
            text = f"{c.get('label', '?')} ({_short_count(c.get('params'))})" + (" ref" if c.get("reference") else "")
            right_half = c["latency_ms"] > middle  # labels lean inwards, so none runs off the plot
            axes.annotate(text, (c["latency_ms"], c["score"]), fontsize=6, xytext=(-4 if right_half else 4, 3),
                          textcoords="offset points", ha="right" if right_half else "left")
    slowest = max(c["latency_ms"] for c in trained)
    if latency_bound is not None and latency_bound <= 2 * slowest:  # a far bound would squash the points
        axes.axvline(latency_bound, color="grey", linestyle="--", linewidth=1, label="latency bound")
    axes.set(xlabel="latency, batch 1 (ms)", ylabel=f"validation {metric}",
             title="Student search: every trained candidate")
    axes.title.set_fontsize(10)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return _png(figure)


def _short_count(params: int | None) -> str:
    if params is None:
        return "? params"
    return f"{params / 1e6:.2f} M" if params >= 1e6 else f"{params / 1e3:.1f} k"


def robustness(curves: dict[str, Sequence[float | None]], severities: Sequence[str], shift_names: Sequence[str],
               drops: dict[str, Sequence[float | None]]) -> bytes | None:
    """Left: balanced accuracy on clean validation and at each severity of the shift battery (mean
    over shifts), one line per group. Right: each shift's drop at the middle severity, per group."""
    if not curves:
        return None
    figure = _figure(9.0, 3.3)
    left, right = figure.subplots(1, 2, width_ratios=[1, 2])
    steps = ["clean", *severities]
    width = 0.8 / max(1, len(drops))
    for index, (label, values) in enumerate(curves.items()):
        color = _group_color(label, index)
        left.plot(steps, [np.nan if v is None else 100 * v for v in values], marker="o", label=label, color=color)
        offsets = np.arange(len(shift_names)) + (index - (len(drops) - 1) / 2) * width
        right.bar(offsets, [np.nan if v is None else 100 * v for v in drops.get(label, [])], width=width,
                  color=color, label=label)
    left.set(ylabel="balanced accuracy (%)", title="Shift battery: mean over shifts")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set_xticks(np.arange(len(shift_names)), shift_names, rotation=40, ha="right", fontsize=8)
    right.axhline(0, color="#444", linewidth=0.8)
    right.set(ylabel="drop at moderate severity (points)", title="Per shift (positive: worse than clean)")
    right.grid(alpha=0.3, axis="y")
    for axes in (left, right):
        axes.title.set_fontsize(10)
    return _png(figure)


def _group_color(label: str, index: int) -> str:
    """The role's colour for a role's group; methods of a comparison take the cycle's colours."""
    for role, name in ROLE_LABELS.items():
        if label == name:
            return ROLE_COLORS[role]
    return f"C{index % 10}"
