"""External test sets in the reports: per set, every model's metrics with intervals, mean ± std
over seeds, and the pooled test of distilled against alone. Rows come from ``results.json``'s
``external`` list; a file without it renders nothing here."""

from __future__ import annotations

from kdistill.report.format import ROLE_LABELS, interval, mean_std, model_label, num, pct, several_seeds
from kdistill.report.methods import pooled_sentence


def describe(external: dict) -> str:
    counts = " / ".join(map(str, external.get("class_counts") or []))
    left_out = external.get("copies_of_run_images") or []
    skipped = external.get("skipped_files") or []
    parts = [f"{external.get('root')}: {external.get('images')} images ({counts}); evaluated once, never "
             "selected on; each model at its own threshold and temperature"]
    if left_out:
        parts.append(f"{len(left_out)} byte-identical copies of the run's own images left out")
    if skipped:
        parts.append(f"{len(skipped)} unreadable files skipped")
    return "; ".join(parts) + "."


def table_rows(external: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per model: accuracy and AUC with 95% intervals, balanced accuracy,
    sensitivity, specificity, ECE and the threshold used."""
    header = ["model", "accuracy %", "balanced acc %", "sensitivity %", "specificity %", "AUC", "ECE", "threshold"]
    models = external.get("models") or []
    seeded = several_seeds(models)
    rows = []
    for row in models:
        ci = row.get("ci") or {}
        rows.append([model_label(row, seeded), pct(row.get("accuracy")) + interval(ci.get("accuracy"), True),
                     pct(row.get("balanced_accuracy")), pct(row.get("sensitivity")), pct(row.get("specificity")),
                     num(row.get("auc")) + interval(ci.get("auc"), False), num(row.get("ece")),
                     num(row.get("threshold"))])
    summary = external.get("summary") or {}
    if seeded:
        for group, metrics in summary.items():
            if group == "teacher":
                continue
            rows.append([f"{ROLE_LABELS.get(group, group)}, mean ± std",
                         mean_std(metrics.get("accuracy"), True), mean_std(metrics.get("balanced_accuracy"), True),
                         mean_std(metrics.get("sensitivity"), True), mean_std(metrics.get("specificity"), True),
                         mean_std(metrics.get("auc"), False), mean_std(metrics.get("ece"), False), ""])
    return header, rows


def pooled_sentences(external: dict) -> list[str]:
    """The pooled test of each distilled method against alone, on this set's images."""
    return [pooled_sentence(test) for test in external.get("pooled_tests") or []]


def markdown_section(results: dict) -> list[str]:
    lines = []
    for external in results.get("external") or []:
        header, rows = table_rows(external)
        lines += ["", f"## External test set: {external['name']}", "", describe(external), "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        sentences = pooled_sentences(external)
        if sentences:
            lines += ["", *sentences]
    return lines
