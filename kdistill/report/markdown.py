"""``results.json`` -> ``report.md``: the comparison table, mean +- std over seeds, the paired
test of distilled vs alone, calibration, and how it was all obtained. Older results files (no
seeds, no intervals) still render: every added key is optional."""

from __future__ import annotations

import json

from kdistill.eval.metrics import BOOTSTRAP_RESAMPLES
from kdistill.report.format import (ROLE_LABELS, count, interval, mean_std, model_label, num, p_value, pct,
                                     several_seeds, summary_title)
from kdistill.report import external as external_report
from kdistill.report import robustness as robustness_report
from kdistill.report.methods import POOLED_TEST, compared_methods, methods_markdown, pooled_sentence, pooled_test

SIGNIFICANCE = 0.05
SEARCH_TOP = 10  # ranked rows of a student search shown in the reports
SUMMARY_COLUMNS = (("accuracy", "accuracy %", True), ("balanced_accuracy", "balanced acc %", True),
                   ("sensitivity", "sensitivity %", True), ("specificity", "specificity %", True),
                   ("auc", "AUC", False), ("ece", "ECE", False))


def comparison_table(results: dict) -> str:
    """The Markdown table: one row per model, metrics on the test split, size and speed."""
    batch = results["models"][0].get("throughput_batch", 64) if results["models"] else 64
    header = ("| model | role | accuracy % | balanced acc % | sensitivity % | specificity % | AUC | ECE "
              f"| params | MACs | latency b1 (ms) | throughput b{batch} (img/s) | speed-up vs teacher |")
    lines = [header, "|" + "---|" * 13]
    seeded = several_seeds(results["models"])
    for row in results["models"]:
        speedup = row.get("speedup_vs_teacher")
        ci = row.get("ci") or {}
        lines.append(
            f"| {row['name']} | {model_label(row, seeded)} | {pct(row['accuracy'])}{interval(ci.get('accuracy'), True)} "
            f"| {pct(row['balanced_accuracy'])} | {pct(row['sensitivity'])} | {pct(row['specificity'])} "
            f"| {num(row['auc'])}{interval(ci.get('auc'), False)} | {num(row['ece'])} "
            f"| {count(row['params'])} | {count(row['macs'])} "
            f"| {num(row.get('latency_ms_batch1'), 2)} | {num(row.get('throughput_img_s'), 0)} "
            f"| {'n/a' if speedup is None else f'{speedup:.1f}x'} |"
        )
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    """Mean ± std over seeds per role (sample std), with n; a role of one model shows its value alone."""
    summary = results.get("summary") or {}
    lines = ["| role | n | " + " | ".join(title for _, title, _ in SUMMARY_COLUMNS) + " |",
             "|" + "---|" * (len(SUMMARY_COLUMNS) + 2)]
    for role, metrics in summary.items():
        n = max((m.get("n") or 0 for m in metrics.values()), default=0)
        cells = [mean_std(metrics.get(key), percent) for key, _, percent in SUMMARY_COLUMNS]
        lines.append(f"| {ROLE_LABELS.get(role, role)} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(tests: list[dict]) -> str:
    """One line per seed: discordant images, McNemar's exact p, accuracy and AUC differences."""
    lines = ["| seed | right only alone | right only distilled | McNemar p | accuracy diff (points) "
             "| AUC diff [95% paired bootstrap] |", "|---|---|---|---|---|---|"]
    for t in tests:
        auc = "n/a" if t.get("auc_diff") is None else f"{t['auc_diff']:+.3f}{interval(t.get('auc_diff_ci'), False)}"
        lines.append(f"| {t['seed']} | {t['baseline_only_correct']} | {t['distilled_only_correct']} "
                     f"| {p_value(t['p_value'])} | {100 * t['accuracy_diff']:+.1f} | {auc} |")
    return "\n".join(lines)


def verdict(tests: list[dict]) -> str:
    """A plain sentence: did distillation change test accuracy significantly (McNemar, p < 0.05)?"""
    n = len(tests)
    significant = [t for t in tests if t["p_value"] < SIGNIFICANCE]
    better = sum(t["accuracy_diff"] > 0 for t in significant)
    worse = len(significant) - better
    evidence = f"McNemar p = {', '.join(p_value(t['p_value']) for t in tests)}"
    every = "this seed" if n == 1 else f"every one of the {n} seeds"
    if not significant:
        where = "" if n == 1 else f" in any of the {n} seeds"
        return (f"Distillation did not help significantly: the distilled student's test accuracy did not "
                f"differ from the student alone's at the {SIGNIFICANCE} level{where} ({evidence}).")
    if better == n:
        return (f"Distillation helped: the distilled student was significantly more accurate than the "
                f"student alone in {every} ({evidence}).")
    if worse == n:
        return (f"Distillation hurt: the distilled student was significantly less accurate than the "
                f"student alone in {every} ({evidence}).")
    return (f"Mixed: distillation was significantly better in {better} and significantly worse in "
            f"{worse} of {n} seeds, with no significant difference in the rest ({evidence}); "
            f"no consistent effect.")


def calibration_table(results: dict) -> str:
    """Per model: the validation-chosen threshold vs 0.5, and ECE before/after temperature scaling."""
    seeded = several_seeds(results["models"])
    lines = ["| model | threshold (rule, fitted on) | sens / spec % at threshold | accuracy % at 0.5 "
             "| sens / spec % at 0.5 | temperature | ECE before -> after |", "|---|---|---|---|---|---|---|"]
    for row in results["models"]:
        half = row.get("at_0.5") or {}
        fitted_on = f", {row['threshold_fitted_on']}" if row.get("threshold_fitted_on") else ""
        rule = f" ({row['threshold_rule']}{fitted_on})" if row.get("threshold_rule") else ""
        lines.append(f"| {model_label(row, seeded)} | {num(row.get('threshold'))}{rule} "
                     f"| {pct(row.get('sensitivity'))} / {pct(row.get('specificity'))} "
                     f"| {pct(half.get('accuracy'))} | {pct(half.get('sensitivity'))} / "
                     f"{pct(half.get('specificity'))} | {num(row.get('temperature'), 2)} "
                     f"| {num(row.get('ece_uncalibrated'))} -> {num(row.get('ece'))} |")
    return "\n".join(lines)


def _statistics_section(results: dict) -> list[str]:
    """Mean ± std, the paired test and its verdict, calibration; nothing for older results files."""
    lines = methods_markdown(results)
    if results.get("summary"):
        lines += ["", f"## {summary_title(results['summary']).capitalize()}", "", summary_table(results)]
    tests = results.get("paired_tests")
    if tests:
        per_method = [[t for t in tests if t.get("method") == m] for m in compared_methods(results)] or [tests]
        for method_tests in filter(None, per_method):
            title = f" ({method_tests[0]['method']})" if compared_methods(results) else ""
            lines += ["", f"## Distilled{title} vs alone on the same test images", "",
                      paired_table(method_tests), "", verdict(method_tests)]
            pooled = pooled_test(results, method_tests[0].get("method"))
            if pooled:
                lines += ["", pooled_sentence(pooled)]
        lines += [
                  "", "McNemar's exact test counts the test images exactly one of the two students "
                  "classifies correctly (each at its own validation threshold); the AUC interval comes "
                  f"from {BOOTSTRAP_RESAMPLES} bootstrap resamples of the test images shared by both models. Seeds are "
                  "tested one by one, without correction for multiple comparisons."]
        if results.get("pooled_tests"):
            lines[-1] += (f" The pooled line tests all seeds at once with the test images as units "
                          f"({POOLED_TEST}): the seeds are repeated measurements of the same images, not new samples.")
    if any("at_0.5" in row for row in results["models"]):
        lines += ["", "## Threshold and calibration (never fitted on the test split)", "",
                  calibration_table(results)]
    return lines


def markdown_report(results: dict) -> str:
    dataset = results["dataset"]
    first = results["models"][0]
    positive = dataset.get("positive_class")
    lines = [
        "# kdistill report",
        "",
        f"Data: {dataset.get('root')}; classes {', '.join(dataset['classes'])}"
        + (f"; positive class (sensitivity) {positive}" if positive else "") + ".",
        "",
        *(f"**Warning:** {warning}.\n" for warning in results.get("warnings") or []),
        "| split | images | per class | source |",
        "|---|---|---|---|",
    ]
    for split, size in dataset.get("sizes", {}).items():
        counts = dataset.get("class_counts", {}).get(split, [])
        source = dataset.get("sources", {}).get(split, "")
        lines.append(f"| {split} | {size} | {' / '.join(map(str, counts))} | {source} |")
    lines += [
        "",
        f"## Results on the {dataset.get('evaluated_on', 'test')} split",
        "",
        comparison_table(results),
        *_statistics_section(results),
        *external_report.markdown_section(results),
        *robustness_report.markdown_section(results),
        *_search_section(results.get("search")),
        "",
        "## How these figures were obtained",
        "",
        "- " + (_threshold_note(results["models"], positive) if positive else "Decisions by arg-max."),
        *(["- Accuracy and AUC in brackets: 95% percentile bootstrap intervals over the test images "
           f"({BOOTSTRAP_RESAMPLES} resamples)."] if any(row.get("ci") for row in results["models"]) else []),
        f"- CPU speed: {first['threads']} thread(s); batch-1 latency and batch-"
        f"{first.get('throughput_batch', 64)} throughput of each model in its fastest runtime "
        "(PyTorch eager, channels-last, ONNX Runtime; the `kdistill bench` code), every architecture "
        "timed side by side, median of repeated rounds after warm-up. MACs counted by "
        "torch.utils.flop_counter.",
        "- Every epoch, decision threshold and temperature was selected on the validation split only (the "
        "prior threshold rule reads the training labels instead, site calibration the site's sample); "
        "the test split and any external test set were used once, for these tables.",
    ]
    for row in results["models"]:
        lines.append(f"- {model_label(row, True)}: {_training_summary(row)}")
    doctor = results.get("doctor")
    if doctor:
        lines.append(f"- Data doctor: {len(doctor['unreadable'])} unreadable images, "
                     f"{len(doctor['duplicate_groups'])} byte-identical duplicate groups "
                     f"({len(doctor['duplicate_groups_across_splits'])} across supplied splits), "
                     f"{len(doctor.get('label_conflicts') or [])} label conflicts, "
                     f"{len(doctor['leaking_groups'])} patients in more than one supplied split.")
    export = results.get("export")
    if export:
        lines.append(f"- Deployable student: {export['path']} (ONNX; max probability difference vs "
                     f"PyTorch {export['max_prob_diff']:.1e} on {export['checked_on']}).")
        int8 = export.get("int8")
        if int8 and int8.get("accuracy_delta") is not None:
            lines.append(f"- Int8 copy: {int8['path']}; accuracy {pct(int8['accuracy_int8'])}% vs fp32 "
                         f"{pct(int8['accuracy_fp32'])}% on {int8['checked_on']}.")
    if dataset.get("unused"):
        lines.append(f"- Not used: {dataset['unused']} (too small to select on).")
    if dataset.get("skipped_files"):
        lines.append(f"- {len(dataset['skipped_files'])} unreadable files skipped (see results.json).")
    return "\n".join(lines) + "\n"


def search_table_rows(search: dict, top: int = SEARCH_TOP) -> list[tuple[str, dict]]:
    """``(rank, candidate)`` for the best ``top`` trained candidates of a student search, then the
    reference student when it ranks lower or was not trained (its rank then empty)."""
    candidates = search.get("candidates") or []
    trained = [c for c in candidates if c.get("status") == "trained"]  # search.json lists them best first
    rows = [(str(rank), c) for rank, c in enumerate(trained[:top], 1)]
    for c in candidates:
        if c.get("reference") and all(c is not shown for _, shown in rows):
            rank = trained.index(c) + 1 if c in trained else None
            rows.append(("" if rank is None else str(rank), c))
    return rows


def search_row_cells(rank: str, candidate: dict, best_label: str | None) -> list[str]:
    """One ranked-table row as plain text: rank, student, params, latency, score, Pareto, status."""
    latency, score = candidate.get("latency_ms"), candidate.get("score")
    name = candidate.get("label", "?") + (" (reference)" if candidate.get("reference") else "")
    if candidate.get("label") == best_label:
        name += " (chosen)"
    params, macs = candidate.get("params"), candidate.get("macs")
    return [rank, name, "n/a" if params is None else count(params), "n/a" if macs is None else count(macs),
            "" if latency is None else f"{latency:.3f}", "" if score is None else f"{score:.4f}",
            "yes" if candidate.get("pareto") else "", str(candidate.get("status", ""))]


def search_header(search: dict) -> list[str]:
    return ["rank", "student", "params", "MACs", "latency b1 (ms)", f"val {search.get('metric', 'score')}",
            "Pareto", "status"]


def search_markdown(summary: dict) -> str:
    """``search.md`` of ``kdistill search-student``: every candidate, best first, with the budget,
    the time spent and what was skipped."""
    budget, metric = summary["budget"], summary["metric"]
    bounds = ", ".join(f"{k} {v}" for k, v in budget.items() if v is not None and k != "threads")
    best = summary.get("best")
    lines = [f"# Student search within the budget ({bounds or 'no bound'})", "",
             f"- Input: {summary['input_size']} px, {summary['channels']} channel(s); latency: batch 1, "
             f"fastest runtime, {budget['threads']} thread(s), measured once per candidate.",
             f"- Ranked on the validation {metric} after {summary['search']['proxy_epochs']} distilled "
             f"proxy epochs (the test split is not used); {summary['seconds']:.0f} s in all.",
             f"- Skipped by the time budget: {', '.join(summary['skipped']) or 'none'}.",
             "- Best: none trained." if best is None else
             f"- Best: `student.model: {best['model']}`, `student.model_args: {json.dumps(best['model_args'])}`; "
             "trained fully, alone and distilled, in `best/`.",
             "", "| " + " | ".join(search_header(summary)) + " |", "|---:|---|---:|---:|---:|---:|:-:|---|"]
    trained = [c for c in summary["candidates"] if c.get("status") == "trained"]
    for candidate in summary["candidates"]:
        rank = str(trained.index(candidate) + 1) if candidate in trained else ""
        lines.append("| " + " | ".join(search_row_cells(rank, candidate, best and best["label"])) + " |")
    return "\n".join(lines) + "\n"


def _search_section(search: dict | None) -> list[str]:
    """The student search that chose this run's student: the short ranked table."""
    if not search:
        return []
    best_label = (search.get("best") or {}).get("label")
    trained = sum(c.get("status") == "trained" for c in search.get("candidates") or [])
    lines = ["", "## Student search (validation split)", "",
             f"{len(search.get('candidates') or [])} candidates, {trained} trained for "
             f"{(search.get('search') or {}).get('proxy_epochs', '?')} proxy epoch(s), ranked on the validation "
             f"{search.get('metric', '?')}; the best {SEARCH_TOP} and the reference student (search.md lists all).",
             "", "| " + " | ".join(search_header(search)) + " |", "|---:|---|---:|---:|---:|---:|:-:|---|"]
    lines += ["| " + " | ".join(search_row_cells(rank, c, best_label)) + " |"
              for rank, c in search_table_rows(search)]
    return lines


def _threshold_note(rows: list[dict], positive: str) -> str:
    thresholds = {row.get("threshold") for row in rows}
    if any("threshold_rule" in row for row in rows):
        return (f"Each model calls {positive} when its temperature-scaled {positive} probability reaches "
                f"its own threshold, set by the rule named beside it in the table above.")
    return f"Decision threshold {num(next(iter(thresholds)), 2)} on the {positive} probability."


def _training_summary(row: dict) -> str:
    """How a model was trained and which epoch was kept, from its checkpoint metadata."""
    training, selected = row.get("training") or {}, row.get("selected")
    parts = []
    if "alpha" in training and "temperature" in training:
        parts.append(f"{training['method']} (alpha {training['alpha']}, T {training['temperature']})")
    elif training.get("params") is not None:
        own = ", ".join(f"{key} {value}" for key, value in training["params"].items() if value is not None)
        parts.append(f"{training['method']} ({own})")
    if "epochs" in training:
        parts.append(f"{training['epochs']} epochs, batch {training['batch_size']}, "
                     f"{training['optimizer']} lr {training['lr']}, class weighting "
                     f"{training.get('class_weighting', 'none')}")
    if selected:
        value = selected["val"].get(selected["metric"])
        parts.append(f"epoch {selected['epoch']} kept (validation {selected['metric']} {num(value, 4)})")
    return "; ".join(parts) or "loaded from a checkpoint"
