"""Number and label formatting shared by ``report.md``, ``report.html`` and the plots, so a figure
reads the same in every output. Every helper accepts ``None`` (an optional key of an older
``results.json``) and writes ``n/a`` for it."""

from __future__ import annotations

ROLE_LABELS = {"teacher": "teacher", "member": "teacher member", "baseline": "student alone",
               "distilled": "student distilled"}
STUDENT_ROLES = ("baseline", "distilled")  # trained once per seed; the teacher and its members once


def several_seeds(rows: list[dict]) -> bool:
    """Whether the students come from more than one seed (their labels then say which)."""
    return len({row.get("seed") for row in rows if row.get("role") in STUDENT_ROLES}) > 1


def group_label(row: dict) -> str:
    """The row's group: its role, its method in a comparison of methods, an ensemble member's model."""
    label = ROLE_LABELS.get(row.get("role"), row.get("role"))
    if row.get("role") == "member":
        return f"{label} ({row.get('name')})"
    return f"{label} ({row.get('method')})" if row.get("group") else label


def model_label(row: dict, seeded: bool) -> str:
    """The row's group, and its seed when the students come from several."""
    label = group_label(row)
    return f"{label}, seed {row.get('seed')}" if seeded and row.get("role") in STUDENT_ROLES else label


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal: ``0.9123`` -> ``91.2``."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def num(value: float | None, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def count(value: int) -> str:
    """A parameter or MAC count with a unit: ``1_810_000_000`` -> ``1.81 G``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


def p_value(p: float) -> str:
    """A test's p-value, with the smallest ones as ``< 0.001``."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_is(p: float) -> str:
    """``p = 0.032`` or ``p < 0.001``: a p-value in a sentence."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def interval(bounds, percent: bool) -> str:
    """`` [lo, hi]`` after a value, in the value's unit; empty when there is no interval."""
    if not bounds:
        return ""
    fmt = pct if percent else num
    return f" [{fmt(bounds[0])}, {fmt(bounds[1])}]"


def mean_std(entry: dict | None, percent: bool) -> str:
    """``mean ± std`` of a summary entry over several models (seeds); one model's value alone, since
    the spread of a single seed is unknown, not zero."""
    if not entry or entry.get("mean") is None:
        return "n/a"
    fmt = pct if percent else num
    if (entry.get("n") or 1) <= 1:
        return fmt(entry["mean"])
    return f"{fmt(entry['mean'])} ± {fmt(entry.get('std') or 0.0)}"


def seeds_in(summary: dict | None) -> int:
    """The most models any role of a ``summary`` averages over (1 for a single-seed run)."""
    return max((metric.get("n") or 1 for entry in (summary or {}).values() for metric in (entry or {}).values()
                if isinstance(metric, dict)), default=1)


def summary_title(summary: dict | None) -> str:
    """What the summary table shows: a mean ± std over seeds, or one seed's values."""
    return "mean ± std over seeds" if seeds_in(summary) > 1 else "one seed"
