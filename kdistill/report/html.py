"""``results.json`` -> ``report.html``: one self-contained page a user can open, mail or archive.

Plots are embedded as base64 ``data:`` URIs and the CSS is inline; a Content-Security-Policy allows
nothing else, so the page makes no network request. Every string taken from the results or the
config is HTML-escaped. Keys added over time (seeds, thresholds, calibration, paired tests,
predictions) are optional: an older ``results.json`` renders with the sections it can fill.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from kdistill.report import plots
from kdistill.report import external as external_report
from kdistill.report import robustness as robustness_report
from kdistill.report.format import ROLE_LABELS, count, mean_std, num, p_value, pct, summary_title
from kdistill.report.markdown import SEARCH_TOP, search_header, search_row_cells, search_table_rows, verdict
from kdistill.report.methods import (COLUMNS as METHOD_COLUMNS, POOLED_TEST, compared_methods, method_rows,
                                     pooled_sentence, pooled_test)

TEST_NAMES = {"mcnemar": "McNemar", "bootstrap": "paired bootstrap"}
DETAILS_LIMIT = 200  # items listed per doctor finding; the counts are always complete

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1240px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
       border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; white-space: normal; vertical-align: bottom; }
.scroll { overflow-x: auto; } td .muted { display: block; font-size: 11px; } td:first-child, th:first-child { text-align: left; }
.verdict { background: #f6f8fa; border-left: 4px solid #4c72b0; padding: 0.6em 1em; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; text-align: center; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.muted { color: #666; font-size: 12px; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def html_report(results: dict, config_yaml: str) -> str:
    """The whole report page for one run."""
    sections = [_heading(results), _verdict(results), _methods_table(results), _summary_table(results),
                _models_table(results),
                _threshold_table(results), _paired_table(results), _external(results), _robustness(results),
                _student_search(results.get("search")),
                _plots(results), _doctor(results),
                _run_info(results), _config(config_yaml)]
    body = "\n".join(section for section in sections if section)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>kdistill report</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# ---------------------------------------------------------------- small helpers


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>\n" for row in rows)
    return f'<div class="scroll"><table>\n<tr>{head}</tr>\n{body}</table></div>'


def _img(png: bytes | None, caption: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _row_id(row: dict, index: int) -> str:
    """The contract's row id; older files have none, and there the role is unique."""
    return str(row.get("id") or row.get("role") or f"model {index}")


def _with_ci(value, interval, percent: bool) -> str:
    show = pct if percent else num
    if not interval or len(interval) != 2 or None in interval:
        return show(value)
    return f'{show(value)} <span class="muted">[{show(interval[0])}, {show(interval[1])}]</span>'


def _temperature(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _p(value) -> str:
    return "n/a" if value is None else p_value(value)  # written as report.md writes it


def _signed_points(value) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


# ---------------------------------------------------------------- sections


def _heading(results: dict) -> str:
    dataset = results.get("dataset") or {}
    classes = ", ".join(dataset.get("classes") or [])
    positive = dataset.get("positive_class")
    text = f"Data: {dataset.get('root')}; classes {classes}"
    if positive:
        text += f"; positive class (sensitivity) {positive}"
    rows = [[escape(str(split)), str(size), escape(" / ".join(map(str, dataset.get("class_counts", {}).get(split, [])))),
             escape(str(dataset.get("sources", {}).get(split, "")))]
            for split, size in (dataset.get("sizes") or {}).items()]
    table = _table(["split", "images", "per class", "source"], rows) if rows else ""
    warnings = "".join(f"<p><strong>Warning:</strong> {escape(str(w))}.</p>\n" for w in results.get("warnings") or [])
    return f"<h1>kdistill report</h1>\n<p>{escape(text)}.</p>\n{warnings}{table}"


def _methods_table(results: dict) -> str:
    """Per distillation method of a comparison: mean ± std, paired tests, cost, two-class mark."""
    if not compared_methods(results):
        return ""
    rows = [[escape(str(entry[key])) for key, _ in METHOD_COLUMNS] for entry in method_rows(results)]
    return "<h2>Distillation methods compared</h2>\n" + _table([escape(t) for _, t in METHOD_COLUMNS], rows)


def _verdict(results: dict) -> str:
    """One paragraph: did distillation help, with the paired test behind the answer."""
    summary, tests = results.get("summary") or {}, results.get("paired_tests") or []
    if compared_methods(results):  # one verdict per method, in the methods table
        return ('<h2>Verdict</h2>\n<p class="verdict">Distillation methods compared: each method\'s '
                "paired tests against the student alone and its verdict are in the table below.</p>")
    parts = [_accuracy_sentence(results, summary)]
    if tests:
        p_values = ", ".join(f"{_p(t.get('p_value'))} (seed {t.get('seed')})" for t in tests)
        name = TEST_NAMES.get(tests[0].get("test"), str(tests[0].get("test", "")))
        parts.append(f"Paired {escape(name)} test of distilled vs alone on the same "
                     f"test images, per seed: p = {escape(p_values)}.")
        parts.append(f"<strong>{escape(verdict(tests))}</strong>")
        pooled = pooled_test(results, tests[0].get("method"))
        if pooled:
            parts.append(escape(pooled_sentence(pooled)))
    else:
        parts.append("No paired test in this results file, so no claim about whether distillation helped.")
    return '<h2>Verdict</h2>\n<p class="verdict">' + " ".join(p for p in parts if p) + "</p>"


def _accuracy_sentence(results: dict, summary: dict) -> str:
    by_role = {role: (summary.get(role) or {}).get("accuracy") for role in ("baseline", "distilled")}
    if all(by_role.values()):
        n = by_role["distilled"].get("n") or 1
        return (f"Test accuracy of the student distilled {mean_std(by_role['distilled'], True)} % vs "
                f"the student alone {mean_std(by_role['baseline'], True)} % "
                f"({'mean ± std over ' + str(n) + ' seeds' if n > 1 else 'one seed'}).")
    rows = {row.get("role"): row for row in results.get("models") or []}
    if "baseline" in rows and "distilled" in rows:
        return (f"Test accuracy of the student distilled {pct(rows['distilled'].get('accuracy'))} % vs "
                f"the student alone {pct(rows['baseline'].get('accuracy'))} %.")
    return ""


def _summary_table(results: dict) -> str:
    """Mean ± std per role over the seeds, with size and speed (means of that role's rows)."""
    summary = results.get("summary")
    if not summary:
        return ""
    metrics = [("accuracy", True), ("balanced_accuracy", True), ("sensitivity", True),
               ("specificity", True), ("auc", False), ("ece", False)]
    rows = []
    for role, entry in summary.items():
        members = [r for r in results.get("models") or [] if r.get("role") == role]
        seeds = max(((entry or {}).get(m) or {}).get("n") or 1 for m, _ in metrics)
        rows.append([escape(ROLE_LABELS.get(role, role)), str(seeds)]
                    + [mean_std((entry or {}).get(m), percent) for m, percent in metrics]
                    + _size_speed(members))
    header = ["role", "seeds", "accuracy %", "balanced acc %", "sensitivity %", "specificity %", "AUC",
              "ECE", "params", "MACs", "latency b1 (ms)", "speed-up vs teacher"]
    return (f"<h2>Comparison ({summary_title(summary)}, test split)</h2>\n" + _table(header, rows))


def _size_speed(rows: list[dict]) -> list[str]:
    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    params, macs, latency, speedup = (mean(k) for k in ("params", "macs", "latency_ms_batch1", "speedup_vs_teacher"))
    return ["n/a" if params is None else count(round(params)), "n/a" if macs is None else count(round(macs)),
            num(latency, 2), "n/a" if speedup is None else f"{speedup:.1f}x"]


def _models_table(results: dict) -> str:
    """Every model: metrics at its decision threshold with 95% bootstrap CIs, calibration, size, speed."""
    models = results.get("models") or []
    rows = [_model_row(row, index) for index, row in enumerate(models)]
    ci = " [95% CI]" if any(r.get("ci") for r in models) else ""
    ece = "ECE (raw → scaled)" if any(r.get("ece_uncalibrated") is not None for r in models) else "ECE"
    header = ["model", "seed", f"accuracy %{ci}", "balanced acc %", "sensitivity %",
              "specificity %", f"AUC{ci}", "threshold", "temperature", ece, "params",
              "MACs", "latency b1 (ms)", "speed-up vs teacher"]
    return "<h2>Every model (test split)</h2>\n" + _table(header, rows) + _models_note(results)


def _model_row(row: dict, index: int) -> list[str]:
    ci = row.get("ci") or {}
    ece = num(row.get("ece"))
    if row.get("ece_uncalibrated") is not None:
        ece = f"{num(row['ece_uncalibrated'])} → {ece}"
    cells = [f'{escape(_row_id(row, index))}<span class="muted">{escape(str(row.get("name", "")))}</span>',
             "" if row.get("seed") is None else str(row["seed"]),
             _with_ci(row.get("accuracy"), ci.get("accuracy"), True),
             pct(row.get("balanced_accuracy")), pct(row.get("sensitivity")), pct(row.get("specificity")),
             _with_ci(row.get("auc"), ci.get("auc"), False), num(row.get("threshold"), 3),
             _temperature(row.get("temperature")), ece] + _size_speed([row])
    if row.get("runtime"):  # the fastest runtime measured; the latency shown is its own
        cells[-2] += f'<span class="muted">{escape(str(row["runtime"]))}</span>'
    return cells


def _models_note(results: dict) -> str:
    models = results.get("models") or [{}]
    first, notes = models[0], []
    rule = first.get("threshold_rule")
    if any(r.get("ci") for r in models):
        notes.append("Confidence intervals: bootstrap over test images, 95%.")
    if rule:
        site = (results.get("dataset") or {}).get("site")
        where = (f"the site sample {site.get('root')} ({site.get('images')} images)" if site
                 else "the validation split")
        notes.append(f"Decision threshold set by rule {rule} (see the config reference); temperature "
                     f"fitted on {where}; ECE after temperature scaling.")
    if first.get("threads") is not None:
        notes.append(f"CPU latency with {first['threads']} thread(s), batch 1, median after warm-up.")
    return '<p class="muted">' + escape(" ".join(notes)) + "</p>"


def _threshold_table(results: dict) -> str:
    """Binary data: the metrics at 0.5 beside those at the validation-chosen threshold."""
    models = [(i, r) for i, r in enumerate(results.get("models") or []) if r.get("at_0.5")]
    if not models:
        return ""
    keys = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")
    rows = [[escape(_row_id(row, i)), num(row.get("threshold"), 3),
             escape(f"{row.get('threshold_rule') or ''}, {row.get('threshold_fitted_on') or 'validation'}")]
            + [f"{pct(row['at_0.5'].get(k))} / {pct(row.get(k))}" for k in keys] for i, row in models]
    header = ["model", "threshold", "rule, fitted on", "accuracy % (0.5 / chosen)", "balanced acc %",
              "sensitivity %", "specificity %"]
    return "<h2>Threshold 0.5 vs chosen (never on the test split)</h2>\n" + _table(header, rows)


def _paired_table(results: dict) -> str:
    tests = results.get("paired_tests")
    if not tests:
        return ""
    rows = [[str(t.get("seed")), escape(str(t.get("baseline"))), escape(str(t.get("distilled"))),
             escape(TEST_NAMES.get(t.get("test"), str(t.get("test")))), str(t.get("baseline_only_correct")), str(t.get("distilled_only_correct")),
             _p(t.get("p_value")), _signed_points(t.get("accuracy_diff")),
             _auc_diff(t.get("auc_diff"), t.get("auc_diff_ci"))] for t in tests]
    header = ["seed", "alone", "distilled", "test", "only alone correct", "only distilled correct", "p-value",
              "accuracy diff (points)", "AUC diff [95% CI]"]
    return ("<h2>Paired tests: distilled vs alone, same test images</h2>\n" + _table(header, rows)
            + _pooled_table(results.get("pooled_tests") or []))


def _pooled_table(tests: list[dict]) -> str:
    """Under the per-seed tests: one test per method over all seeds, the test images as units."""
    if not tests:
        return ""
    rows = [[escape(str(t.get("method", "distilled"))), escape(", ".join(str(s) for s in t.get("seeds") or [])),
             _p(t.get("p_value")), f"{100 * t['accuracy_diff']:+.2f}", str(t.get("images_better")),
             str(t.get("images_worse")), _auc_diff(t.get("auc_diff"), t.get("auc_diff_ci"))] for t in tests]
    header = ["method", "seeds", "p-value", "mean accuracy diff (points)", "images right on more seeds distilled",
              "images right on fewer seeds distilled", "AUC diff of seed-averaged probabilities [95% CI]"]
    note = (f"Pooled over seeds ({POOLED_TEST}): the seeds are repeated measurements of the same test "
            "images, so the images are the units, not image-seed pairs.")
    return ("<h3>Pooled over seeds</h3>\n" + _table([escape(h) for h in header], rows)
            + f'<p class="muted">{escape(note)}</p>')


def _auc_diff(value, interval) -> str:
    if value is None:
        return "n/a"
    text = f"{value:+.3f}"
    if interval and len(interval) == 2 and None not in interval:
        text += f' <span class="muted">[{interval[0]:+.3f}, {interval[1]:+.3f}]</span>'
    return text


def _student_search(search: dict | None) -> str:
    """The search that chose this run's student: every candidate's validation score against its
    latency, and the short ranked table."""
    if not search:
        return ""
    metric, best_label = str(search.get("metric", "score")), (search.get("best") or {}).get("label")
    figure = _img(plots.student_search(search.get("candidates") or [], metric, best_label,
                                       (search.get("budget") or {}).get("latency_ms")),
                  f"validation {metric} vs batch-1 latency, every trained candidate")
    rows = [[escape(cell) for cell in search_row_cells(rank, c, best_label)] for rank, c in search_table_rows(search)]
    note = (f"Ranked on the validation split after {(search.get('search') or {}).get('proxy_epochs', '?')} "
            f"distilled proxy epoch(s); the best {SEARCH_TOP} and the reference student (search.md lists all "
            f"{len(search.get('candidates') or [])}). The chosen student was then trained fully: the tables above.")
    return ("<h2>Student search</h2>\n" + f'<div class="plots">{figure}</div>\n'
            + _table([escape(cell) for cell in search_header(search)], rows)
            + f'\n<p class="muted">{escape(note)}</p>')


def _external(results: dict) -> str:
    """One section per external test set: its rows, mean ± std and pooled tests."""
    sections = []
    for external in results.get("external") or []:
        header, rows = external_report.table_rows(external)
        lines = [f"<h2>External test set: {escape(str(external['name']))}</h2>",
                 f'<p class="muted">{escape(external_report.describe(external))}</p>',
                 _table([escape(h) for h in header], [[escape(c) for c in row] for row in rows])]
        lines += [f"<p>{escape(sentence)}</p>" for sentence in external_report.pooled_sentences(external)]
        sections.append("\n".join(lines))
    return "\n".join(sections)


def _robustness(results: dict) -> str:
    """The shift battery: the plot, the per-model table and the per-shift table."""
    header, rows = robustness_report.model_table_rows(results)
    if not rows:
        return ""
    record = robustness_report.robust_rows(results)[0]["robustness"]
    names, drops = robustness_report.moderate_drops(results)
    figure = _img(plots.robustness(robustness_report.severity_curves(results), record["severities"], names, drops),
                  "shift battery: balanced accuracy by severity, and each shift's drop at moderate severity")
    shift_header, shift_rows = robustness_report.shift_table_rows(results)
    note = (f"Validation ({record['images']} images) re-rendered under {len(record['battery'])} acquisition "
            f"changes at {len(record['severities'])} severities, each model at its own threshold and temperature; "
            "drops in points (positive: worse than clean). Validation chose each model's epoch and threshold, "
            "so the clean column is optimistic; the battery judges recipes, it selects nothing.")
    return ("<h2>Robustness: the shift battery (validation split)</h2>\n" + f'<div class="plots">{figure}</div>\n'
            + _table([escape(h) for h in header], [[escape(c) for c in row] for row in rows])
            + _table([escape(h) for h in shift_header], [[escape(c) for c in row] for row in shift_rows])
            + "".join(f"\n<p>{escape(sentence)}</p>" for sentence in robustness_report.test_sentences(results))
            + f'\n<p class="muted">{escape(note)}</p>')


def _plots(results: dict) -> str:
    models = results.get("models") or []
    dataset = results.get("dataset") or {}
    classes = [str(c) for c in dataset.get("classes") or []]
    groups = [("Accuracy vs latency and ROC", _overview_plots(results, classes)),
              ("Reliability diagrams (test split)", _reliability_plots(results)),
              ("Confusion matrices (test split, at each model's threshold)",
               [_img(plots.confusion_matrix(r["confusion_matrix"], classes or [str(i) for i in range(len(r["confusion_matrix"]))],
                                            _row_id(r, i)), f"confusion matrix: {_row_id(r, i)}")
                for i, r in enumerate(models) if r.get("confusion_matrix")]),
              ("Training curves (train loss; validation loss and metrics; dashed: epoch kept)",
               [_img(plots.training_curves(r["history"], _row_id(r, i), _kept_epoch(r)), f"training: {_row_id(r, i)}")
                for i, r in enumerate(models) if r.get("history")])]
    html = [f'<h3>{escape(title)}</h3>\n<div class="plots">{"".join(figs)}</div>'
            for title, figs in groups if any(figs)]
    return "<h2>Plots</h2>\n" + "\n".join(html) if html else ""


def _kept_epoch(row: dict) -> int | None:
    selected = row.get("selected")
    return selected.get("epoch") if isinstance(selected, dict) else None


def _overview_plots(results: dict, classes: list[str]) -> list[str]:
    models = results.get("models") or []
    several = len({r.get("seed") for r in models if r.get("role") == "distilled"}) > 1
    figures = [_img(plots.accuracy_vs_latency(models, results.get("summary")),
                    "accuracy vs latency" + (" (mean ± std over seeds)" if several else ""))]
    predictions = results.get("predictions") or {}
    positive = (results.get("dataset") or {}).get("positive_class")
    if predictions.get("probabilities") and positive in classes:
        figures.append(_img(plots.roc_curves(predictions["labels"], predictions["probabilities"],
                                             classes.index(positive)), f"ROC, positive class {positive}"))
    return figures


def _reliability_plots(results: dict) -> list[str]:
    predictions = results.get("predictions") or {}
    probabilities = predictions.get("probabilities") or {}
    ece_by_id = {_row_id(r, i): r.get("ece") for i, r in enumerate(results.get("models") or [])}
    return [_img(plots.reliability_diagram(predictions["labels"], probs, model_id, ece_by_id.get(model_id)),
                 f"reliability: {model_id}") for model_id, probs in probabilities.items()]


def _doctor(results: dict) -> str:
    doctor = results.get("doctor")
    if not doctor:
        return "<h2>Data doctor</h2>\n<p>Not run for this data (built-in dataset or older results file).</p>"
    splits = doctor.get("splits") or {}
    rows = [[escape(str(split)), str(sum(counts.values())),
             escape(", ".join(f"{label} {n}" for label, n in counts.items()))] for split, counts in splits.items()]
    duplicates, leaking = doctor.get("duplicate_groups") or [], doctor.get("leaking_groups") or {}
    unreadable = doctor.get("unreadable") or []
    across = len(doctor.get("duplicate_groups_across_splits") or [])
    items = [
        _finding(f"unreadable images: {len(unreadable)}",
                 [f"{u.get('path')}: {u.get('reason')}" if isinstance(u, dict) else str(u) for u in unreadable]),
        _finding(f"non-image files: {len(doctor.get('non_images') or [])}", doctor.get("non_images") or []),
        _finding(f"byte-identical duplicate groups: {len(duplicates)} ({across} across splits)",
                 [" = ".join(map(str, group)) for group in duplicates]),
        _finding(f"patients in more than one split (leakage): {len(leaking)}",
                 [f"{key}: {', '.join(map(str, where))}" for key, where in leaking.items()]),
    ]
    return ("<h2>Data doctor</h2>\n" + f"<p>{escape(str(doctor.get('root', '')))}; "
            f"{escape(str(doctor.get('patients', 'n/a')))} patients.</p>\n"
            + _table(["split", "images", "per class"], rows) + "\n<ul>" + "".join(items) + "</ul>")


def _finding(title: str, lines: list[str]) -> str:
    if not lines:
        return f"<li>{escape(title)}</li>"
    shown = lines[:DETAILS_LIMIT]
    more = f"\n... and {len(lines) - len(shown)} more (results.json has them all)" if len(lines) > len(shown) else ""
    return (f"<li><details><summary>{escape(title)}</summary><pre>"
            f"{escape(chr(10).join(shown) + more)}</pre></details></li>")


def _run_info(results: dict) -> str:
    lines = []
    export = results.get("export")
    if export:
        lines.append(f"Deployable student: {export.get('path')} (ONNX; max probability difference vs PyTorch "
                     f"{_sci(export.get('max_prob_diff'))} on {export.get('checked_on')}).")
    machine = results.get("machine") or {}
    lines.append(f"kdistill {results.get('kdistill_version', '?')}; {machine.get('platform', '?')}; torch "
                 f"{machine.get('torch', '?')}; wall time {results.get('wall_seconds', '?')} s.")
    return "<h2>Run</h2>\n<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>"


def _sci(value) -> str:
    return f"{value:.1e}" if isinstance(value, (int, float)) else "n/a"


def _config(config_yaml: str) -> str:
    return f"<h2>Resolved config</h2>\n<pre>{escape(config_yaml)}</pre>"
