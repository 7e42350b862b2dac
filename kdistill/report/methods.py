"""The comparison of distillation methods (``distill.methods``): per method, mean ± std over seeds,
the paired test against the student alone per seed, the training cost and the two-class mark.
Shared by ``report.md`` and ``report.html``; empty for a run of one method."""

from __future__ import annotations

from kdistill.report.format import mean_std, num, p_value

SIGNIFICANCE = 0.05


def compared_methods(results: dict) -> list[str]:
    """The distilled methods of a comparison, in run order; empty for a single-method run."""
    return list(dict.fromkeys(row.get("method") for row in results.get("models") or []
                              if row.get("role") == "distilled" and row.get("group")))


def method_rows(results: dict) -> list[dict]:
    """One entry per method (the students alone first): cells already formatted."""
    summary = results.get("summary") or {}
    models = results.get("models") or []
    tests = results.get("paired_tests") or []
    entries = [("ce (student alone)", "baseline", [r for r in models if r.get("role") == "baseline"], [])]
    for method in compared_methods(results):
        rows = [r for r in models if r.get("role") == "distilled" and r.get("method") == method]
        entries.append((method, f"distilled-{method}", rows, [t for t in tests if t.get("method") == method]))
    return [_cells(label, summary.get(group) or {}, rows, method_tests) for label, group, rows, method_tests in entries]


def _cells(label: str, metrics: dict, rows: list[dict], tests: list[dict]) -> dict:
    seconds = [r["seconds_per_epoch"] for r in rows if r.get("seconds_per_epoch") is not None]
    notes = {r["degenerate"] for r in rows if r.get("degenerate")}
    return {"method": label, "n": len(rows),
            "accuracy": mean_std(metrics.get("accuracy"), True),
            "balanced_accuracy": mean_std(metrics.get("balanced_accuracy"), True),
            "auc": mean_std(metrics.get("auc"), False),
            "paired": "; ".join(f"seed {t['seed']}: {100 * t['accuracy_diff']:+.1f} (p {p_value(t['p_value'])})"
                                for t in tests) or "-",
            "verdict": _verdict(tests),
            "seconds_per_epoch": num(sum(seconds) / len(seconds), 2) if seconds else "n/a",
            "two_classes": ("degenerates: " + "; ".join(sorted(notes))) if notes else ""}


def _verdict(tests: list[dict]) -> str:
    if not tests:
        return "-"
    better = sum(t["p_value"] < SIGNIFICANCE and t["accuracy_diff"] > 0 for t in tests)
    worse = sum(t["p_value"] < SIGNIFICANCE and t["accuracy_diff"] < 0 for t in tests)
    return f"better in {better}, worse in {worse}, no difference in {len(tests) - better - worse} of {len(tests)} seeds"


COLUMNS = (("method", "method"), ("n", "seeds"), ("accuracy", "accuracy %"),
           ("balanced_accuracy", "balanced acc %"), ("auc", "AUC"),
           ("paired", "vs alone per seed: accuracy diff (points), McNemar p"), ("verdict", "verdict (p < 0.05)"),
           ("seconds_per_epoch", "s / epoch"), ("two_classes", "two classes"))


def methods_markdown(results: dict) -> list[str]:
    """The Markdown section (lines); none for a single-method run."""
    if not compared_methods(results):
        return []
    lines = ["", "## Distillation methods compared", "",
             "| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for entry in method_rows(results):
        lines.append("| " + " | ".join(str(entry[key]) for key, _ in COLUMNS) + " |")
    lines += ["", "Every method's student starts from the same initialization per seed and learns from the "
              "same teacher; each is tested against the student alone of its seed on the same test images "
              "(McNemar's exact test, each at its own validation threshold). Seconds per epoch: the mean of "
              "the training history's epoch times (training plus validation) on this run's machine. "
              "\"degenerates\": with two classes the method reduces to (almost) the teacher's argmax."]
    return lines
