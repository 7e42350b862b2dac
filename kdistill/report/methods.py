"""The comparison of distillation methods (``distill.methods``): per method, mean ± std over seeds,
the paired test against the student alone per seed and pooled over seeds, the training cost and
the two-class mark.
Shared by ``report.md`` and ``report.html``; empty for a run of one method."""

from __future__ import annotations

from kdistill.eval.pooled import PERMUTATIONS
from kdistill.report.format import interval, mean_std, num, p_is, p_value

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
    entries = [("ce (student alone)", "baseline", [r for r in models if r.get("role") == "baseline"], [], None)]
    for method in compared_methods(results):
        rows = [r for r in models if r.get("role") == "distilled" and r.get("method") == method]
        entries.append((method, f"distilled-{method}", rows, [t for t in tests if t.get("method") == method],
                        pooled_test(results, method)))
    return [_cells(label, summary.get(group) or {}, rows, method_tests, pooled)
            for label, group, rows, method_tests, pooled in entries]


def pooled_test(results: dict, method: str | None) -> dict | None:
    """The ``pooled_tests`` row of one distilled method (``None``: the method of a one-method run
    whose rows predate ``method``); none for one seed or an older file."""
    return next((t for t in results.get("pooled_tests") or [] if t.get("method") == method), None)


def pooled_cell(test: dict | None) -> str:
    """``+0.27 (p 0.607; 25 better, 20 worse)``: mean accuracy diff in points, sign-flip p, images."""
    if not test:
        return "-"
    return (f"{100 * test['accuracy_diff']:+.2f} (p {p_value(test['p_value'])}; "
            f"{test['images_better']} better, {test['images_worse']} worse)")


def pooled_sentence(test: dict) -> str:
    """One sentence on the test over all seeds at once, for under the per-seed tests."""
    seeds = ", ".join(str(s) for s in test.get("seeds") or [])
    return (f"Pooled over seeds {seeds} (the test images as units, {POOLED_TEST}): accuracy diff "
            f"{100 * test['accuracy_diff']:+.2f} points, {p_is(test['p_value'])}; "
            f"{test['images_better']} images right on more seeds distilled, {test['images_worse']} on fewer"
            + ("" if test.get("auc_diff") is None else
               f"; AUC of the seed-averaged probabilities {test['auc_diff']:+.3f}{interval(test.get('auc_diff_ci'), False)}")
            + ".")


POOLED_TEST = "paired sign-flip permutation test of the per-image difference in the share of seeds right"


def _cells(label: str, metrics: dict, rows: list[dict], tests: list[dict], pooled: dict | None) -> dict:
    seconds = [r["seconds_per_epoch"] for r in rows if r.get("seconds_per_epoch") is not None]
    notes = {r["degenerate"] for r in rows if r.get("degenerate")}
    return {"method": label, "n": len(rows),
            "accuracy": mean_std(metrics.get("accuracy"), True),
            "balanced_accuracy": mean_std(metrics.get("balanced_accuracy"), True),
            "auc": mean_std(metrics.get("auc"), False),
            "paired": "; ".join(f"seed {t['seed']}: {100 * t['accuracy_diff']:+.1f} (p {p_value(t['p_value'])})"
                                for t in tests) or "-",
            "pooled": pooled_cell(pooled),
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
           ("paired", "vs alone per seed: accuracy diff (points), McNemar p"),
           ("pooled", "vs alone pooled over seeds: mean accuracy diff (points), sign-flip p, images"),
           ("verdict", "verdict (p < 0.05, per seed)"),
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
              "(McNemar's exact test, each at its own validation threshold). Pooled over seeds: one test per "
              "method with the test images as units (seeds are repeated measurements of the same images, "
              "not new samples): per image, the share of seeds the distilled student gets right minus the "
              f"share the student alone gets right, tested for a zero mean by {PERMUTATIONS:,} random sign "
              "flips (two-sided); better / worse: images right on more / fewer seeds distilled. Seconds per "
              "epoch: the mean of the training history's epoch times (training plus validation) on this "
              "run's machine. \"degenerates\": with two classes the method reduces to (almost) the "
              "teacher's argmax."]
    return lines
