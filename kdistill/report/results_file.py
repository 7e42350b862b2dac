"""Reading a ``results.json`` back (``kdistill report``): a file that is missing, not JSON, or not
shaped as kdistill writes it is a one-line error naming it, never a traceback from deep inside the
report code."""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.output_folder import INCOMPLETE
from kdistill.errors import DataError


def read_results(path: Path) -> dict:
    """The parsed results file, checked for what every report reads: a ``dataset`` with its
    ``classes``, and a non-empty list of ``models``, each with a ``name`` and a ``role``."""
    if not path.is_file():
        unfinished = (path.parent / INCOMPLETE).is_file()
        reason = (f"the run in this folder did not finish ({INCOMPLETE}); continue it with --resume"
                  if unfinished else "give the output folder of a kdistill run")
        raise DataError(f"{path}: not found; {reason}")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
        raise DataError(f"{path}: not valid JSON ({str(exc)[:120]})") from None
    problem = _shape_problem(results)
    if problem:
        raise DataError(f"{path}: not a kdistill results file ({problem})")
    return results


def _shape_problem(results) -> str | None:
    if not isinstance(results, dict):
        return f"the top level is a {type(results).__name__}, not an object"
    dataset, models = results.get("dataset"), results.get("models")
    if not isinstance(dataset, dict) or not _strings(dataset.get("classes")):
        return "'dataset' must be an object with a list of 'classes'"
    if not isinstance(models, list) or not models:
        return f"'models' must be a non-empty list of model rows, not {json.dumps(models)[:40]}"
    for index, row in enumerate(models):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not isinstance(row.get("role"), str):
            return f"models[{index}] must be an object with a 'name' and a 'role'"
    return None


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
