"""The shift battery in the reports: per model, balanced accuracy on the clean validation split,
its mean over the battery and the drop per severity; per shift, each group's balanced accuracy at
every severity; a plot of both. Rows come from each model's ``robustness`` record (results.json);
models without one (older files, ``robustness.battery: false``) are left out."""

from __future__ import annotations

import numpy as np

from kdistill.report.format import group_label, model_label, p_is, pct, several_seeds

METRIC = "balanced_accuracy"


def robust_rows(results: dict) -> list[dict]:
    """The model rows that carry a robustness record."""
    return [row for row in results.get("models") or [] if row.get("robustness")]


def grouped(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows of the same group (the seeds of one student), in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_label(row), []).append(row)
    return groups


def points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def model_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per model, clean and battery-mean balanced accuracy, the drop per severity
    and overall (points; positive = worse under shift), and its worst shift at the middle severity."""
    rows = robust_rows(results)
    if not rows:
        return [], []
    severities = rows[0]["robustness"]["severities"]
    header = (["model", "clean bal. acc %", "battery mean %"]
              + [f"drop, {name} (points)" for name in severities]
              + ["drop, all (points)", "drop, unseen shifts (points)", "worst shift (moderate)"])
    seeded = several_seeds(rows)
    table = []
    for row in rows:
        record = row["robustness"]
        label = model_label(row, seeded)
        table.append([label, pct(record["clean"][METRIC]), pct(record["mean"][METRIC]),
                      *[points(drop[METRIC]) for drop in record["drop_by_severity"]],
                      points(record["drop"][METRIC]), _unseen_drop(record), _worst(record)])
    return header, table


def _unseen_drop(record: dict) -> str:
    """The mean drop over the shifts the model's training views never drew (older records: all)."""
    unseen = record.get("unseen", record)
    if unseen is None:
        return "n/a"
    count = len(record["shifts"]) - len(record.get("seen_in_training") or [])
    return f"{points(unseen['drop'][METRIC])} ({count} shifts)"


def _worst(record: dict) -> str:
    middle = len(record["severities"]) // 2
    scored = {name: entries[middle][METRIC] for name, entries in record["shifts"].items()
              if entries[middle].get(METRIC) is not None}
    if not scored:
        return "n/a"
    name = min(scored, key=scored.get)
    return f"{name} ({pct(scored[name])})"


def shift_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per shift, each group's balanced accuracy (mean over its seeds) at every
    severity, ``mild / moderate / strong``, with the level of each severity."""
    groups = grouped(robust_rows(results))
    if not groups:
        return [], []
    first = next(iter(groups.values()))[0]["robustness"]
    header = ["shift", "levels (" + " / ".join(first["severities"]) + ")"] + [f"{g} %" for g in groups]
    table = [["clean", ""] + [pct(_mean([r["robustness"]["clean"][METRIC] for r in members]))
                              for members in groups.values()]]
    for shift in first["battery"]:
        name = shift["name"]
        levels = " / ".join(_level(level) for level in shift["levels"])
        cells = []
        for members in groups.values():
            per_severity = [_mean([r["robustness"]["shifts"][name][s][METRIC] for r in members])
                            for s in range(len(first["severities"]))]
            cells.append(" / ".join(pct(value) for value in per_severity))
        seen = sorted({g for g, members in groups.items()
                       if any(name in (r["robustness"].get("seen_in_training") or []) for r in members)})
        mark = f" [in the training views of: {', '.join(seen)}]" if seen else ""
        table.append([f"{name} ({shift['unit']}){mark}", levels, *cells])
    return header, table


def _level(level) -> str:
    """A severity's level; a change that goes both ways shows ``up/down``."""
    return "/".join(f"{v:g}" for v in level) if isinstance(level, list) else f"{level:g}"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def test_sentences(results: dict) -> list[str]:
    """One sentence per distilled method: its battery balanced accuracy against the student alone's."""
    sentences = []
    for test in results.get("battery_tests") or []:
        method = f" ({test['method']})" if test.get("method") else ""
        seeds = ", ".join(str(s) for s in test.get("seeds") or [])
        p = p_is(test["p_value"])
        sentences.append(f"Distilled{method} vs alone over the whole battery, pooled over seeds {seeds}: balanced "
                         f"accuracy {100 * test['balanced_accuracy_diff']:+.2f} points, {p} (paired sign-flip "
                         f"test over the {test['images']} validation images; {test['images_better']} images "
                         f"better, {test['images_worse']} worse).")
    return sentences


def markdown_section(results: dict) -> list[str]:
    """The report.md section: both tables and what they are."""
    header, rows = model_table_rows(results)
    if not rows:
        return []
    record = robust_rows(results)[0]["robustness"]
    shift_header, shift_rows = shift_table_rows(results)
    lines = ["", "## Robustness: the shift battery (validation split)", "",
             f"Validation ({record['images']} images) re-rendered under {len(record['battery'])} acquisition "
             f"changes at {len(record['severities'])} severities; each model at its own threshold and "
             "temperature. Drops are clean minus shifted balanced accuracy (positive: worse under shift); "
             "a shift the model's own training views drew (marked) no longer tests it out of its training "
             "distribution, so the unseen shifts' drop is given apart. "
             "Validation chose each model's epoch and threshold, so the clean column is optimistic; the "
             "battery judges recipes beside a held-out source, it selects nothing.", "",
             _markdown_table(header, rows), "", _markdown_table(shift_header, shift_rows)]
    sentences = test_sentences(results)
    return lines + (["", *sentences] if sentences else [])


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def severity_curves(results: dict) -> dict[str, list[float]]:
    """Per group: mean balanced accuracy on clean, then at each severity (mean over shifts and seeds)."""
    curves = {}
    for label, members in grouped(robust_rows(results)).items():
        clean = _mean([r["robustness"]["clean"][METRIC] for r in members])
        by_severity = [_mean([r["robustness"]["by_severity"][s][METRIC] for r in members])
                       for s in range(len(members[0]["robustness"]["severities"]))]
        curves[label] = [clean, *by_severity]
    return curves


def moderate_drops(results: dict) -> tuple[list[str], dict[str, list[float]]]:
    """Shift names and, per group, the drop of balanced accuracy at the middle severity per shift."""
    groups = grouped(robust_rows(results))
    if not groups:
        return [], {}
    first = next(iter(groups.values()))[0]["robustness"]
    middle = len(first["severities"]) // 2
    names = [shift["name"] for shift in first["battery"]]
    drops = {}
    for label, members in groups.items():
        drops[label] = [_mean([r["robustness"]["clean"][METRIC] - r["robustness"]["shifts"][name][middle][METRIC]
                               for r in members if r["robustness"]["shifts"][name][middle][METRIC] is not None])
                        for name in names]
    return names, drops
