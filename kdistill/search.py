"""``kdistill search-student``: the best student within ``student.budget``, chosen on the
validation split only, then trained fully through the normal pipeline.

1. Candidates: every combination of the ``search`` lists (family name x width x depth x stem
   stride x squeeze-excitation), plus the configured student as the reference row. Each one's
   parameters are counted; each that fits the parameter bound has its batch-1 latency measured
   once, as ``kdistill bench`` measures it (kdistill/deploy/budget.py).
2. Proxy stage: the teacher is trained once (or loaded from ``teacher.checkpoint``) and its outputs
   cached once; every candidate within the budget is distilled for ``search.proxy_epochs`` epochs,
   fastest first, and scored by its best validation ``student.train.select_metric``. The test
   split is replaced by a guard that raises if anything reads it. Once ``search.time_budget_s``
   has passed (counted from the start, teacher included), no new candidate starts; the rest are
   listed as skipped. The first (fastest) candidate always trains.
3. The best candidate is trained fully, alone and distilled, by ``kdistill.pipeline.run`` into
   ``<out>/best/`` (reusing this search's teacher). That run keeps the parameter bound; the latency
   bound is not measured again there, since a second timing of a student close to the bound
   could refuse the winner of a finished search on noise (the figure kept is the search's).

Output folder::

    search.json  every candidate: knobs, params, MACs, latency, validation scores, Pareto flag, status
    search.md    the same as a table, best first, with the budget and the time spent
    search.png   validation metric against latency, every trained candidate, the Pareto front marked
    teacher/     the teacher, when it was trained here
    best/        the full run of the winner (results.json, report.md, report.html, checkpoints);
                 its results.json keeps the candidates under ``search``, which both reports show
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
import time
from pathlib import Path

from kdistill.config import Config
from kdistill.data import DatasetBundle, load_dataset
from kdistill.data.split import ForbiddenTestSplit
from kdistill.deploy.budget import latency_over_budget, measure_latency, params_over_budget
from kdistill.models.size import count_macs, count_parameters
from kdistill.engine.resume import LOWER_IS_BETTER
from kdistill.errors import KdistillError
from kdistill.fileio import atomic_file, write_json_atomic, write_text_atomic
from kdistill.log import log
from kdistill.report.markdown import search_markdown
from kdistill.report.plots import student_search
from kdistill.models import build_model
from kdistill.distill.inputs import prepare_teacher_outputs, student_channels
from kdistill.output_folder import plan_output
from kdistill.preflight import check_before_data
from kdistill.run_folder import RESULTS_FILE, RESUME_FOLDER, input_paths, remove_if_empty
from kdistill.pipeline import run, seed_everything, train_student, train_teacher, write_reports

FILES = ("search.json", "search.md", "search.png")
BEST_FOLDER = "best"  # the winner's full run
TRAINED, OVER_BUDGET, SKIPPED = "trained", "over budget", "skipped: time budget"
# What the full run's results.json keeps of search.json (the report draws and ranks from these).
SEARCH_KEYS = ("metric", "budget", "search", "input_size", "channels", "seconds", "best", "candidates", "skipped")


def search_student(config: Config, out: Path, overwrite: bool = False) -> dict:
    """Run the whole search into ``out``; return the ``search.json`` content (``final`` holds the
    full run's results). ``overwrite``: replace files in ``out`` that no kdistill command recorded
    writing."""
    started = time.perf_counter()
    targets = [*FILES, RESUME_FOLDER, BEST_FOLDER] + ([] if config.teacher.checkpoint else ["teacher"])
    folder = plan_output(out, targets, overwrite=overwrite, inputs=input_paths(config))
    check_before_data(config, ("teacher",))  # candidates are sized against the budget below
    seed_everything(config.seed, config.deterministic, config.threads)
    data = dataclasses.replace(load_dataset(config.data), test=ForbiddenTestSplit("kdistill search-student"))
    folder.open()
    candidates = [measure_candidate(c, config, data) for c in candidate_grid(config)]
    within = sorted((c for c in candidates if c["status"] is None), key=lambda c: c["latency_ms"])
    log.info(f"search: {len(candidates)} candidates, {len(within)} within the budget; proxy training "
             f"on train {len(data.train)} / val {len(data.val)} images (the test split is not used)")
    if not within:
        _write_all(out, config, candidates, started)
        raise KdistillError(f"search: no candidate fits student.budget; {out / FILES[1]} lists each figure")
    teacher, _ = train_teacher(config, data, out, resume=False)
    remove_if_empty(out / "resume")
    outputs = prepare_teacher_outputs(teacher, data, config)
    for candidate in within:
        # The first candidate always trains, so a search that took long to prepare still ends with a winner.
        if candidate is not within[0] and _out_of_time(config, started):
            candidate["status"] = SKIPPED
            continue
        proxy_train(candidate, config, data, teacher, outputs)
    summary = _write_all(out, config, candidates, started)
    best = summary["best"]
    if best is None:
        raise KdistillError(f"search: no candidate was trained (time budget {config.search.time_budget_s} s)")
    final = final_config(config, best, out)
    summary["final"] = attach_to_final_run(run(final), Path(final.out), summary)
    folder.close()
    return summary


def attach_to_final_run(results: dict, final_out: Path, summary: dict) -> dict:
    """Add the search's candidates to the full run's ``results.json`` under ``search`` and rewrite
    its reports, so report.md and report.html show how the winner was chosen."""
    if not (final_out / RESULTS_FILE).is_file():  # no results written (a torchrun worker rank)
        return results
    results = {**results, "search": {key: summary[key] for key in SEARCH_KEYS}}
    write_json_atomic(final_out / RESULTS_FILE, results)
    write_reports(final_out, results)
    return results


def _out_of_time(config: Config, started: float) -> bool:
    limit = config.search.time_budget_s
    return limit is not None and time.perf_counter() - started > limit


def candidate_grid(config: Config) -> list[dict]:
    """The configured student (reference row), then every combination of the ``search`` lists."""
    grid = config.search
    rows = [{"model": config.student.model, "model_args": dict(config.student.model_args), "reference": True}]
    for name, width, depth, stride, se in itertools.product(grid.models, grid.widths, grid.depths,
                                                            grid.stem_strides, grid.se):
        args = {"width": width, "depth": depth, "stem_stride": stride, "se": se}
        if name == "kd_mobile":
            args["expansion"] = grid.expansion
        candidate = {"model": name, "model_args": args, "reference": False}
        if _knobs(candidate) != _knobs(rows[0]):  # the configured student may be a grid member too
            rows.append(candidate)
    return rows


def _knobs(candidate: dict) -> tuple:
    return candidate["model"], sorted(candidate["model_args"].items())


def label(candidate: dict) -> str:
    """``kd_mobile w8 d3 s2 se`` style: the knobs a user types back into ``student.model_args``."""
    args = candidate["model_args"]
    if "width" not in args:
        return candidate["model"] + ("".join(f" {k}={v}" for k, v in args.items()))
    return (f"{candidate['model']} w{args['width']} d{args['depth']} s{args['stem_stride']}"
            + (f" e{args['expansion']}" if "expansion" in args else "") + (" se" if args.get("se") else ""))


def measure_candidate(candidate: dict, config: Config, data: DatasetBundle) -> dict:
    """Parameters and MACs; the latency only when the parameter bound holds (timing costs seconds).
    ``status`` is None for a candidate within the budget, else why it is out."""
    budget, channels = config.student.budget, student_channels(config)
    model = build_model(candidate["model"], len(data.classes), input_size=data.input_size,
                        in_channels=channels, **candidate["model_args"]).eval()
    row = {**candidate, "label": label(candidate), "params": count_parameters(model),
           "macs": count_macs(model, data.input_size, channels), "latency_ms": None, "runtime": None,
           "val": None, "score": None, "epoch": None, "seconds": None, "pareto": False, "status": None}
    over = params_over_budget(row["params"], budget.params)
    if over is None:
        latency = measure_latency(model, candidate["model"], input_size=data.input_size, channels=channels,
                                  num_classes=len(data.classes), threads=budget.threads)
        row.update(latency_ms=latency["latency_ms"], runtime=latency["runtime"])
        over = latency_over_budget(latency, budget.latency_ms)
    if over:
        row["status"] = f"{OVER_BUDGET}: {over}"
    log.info(f"search: {row['label']}: {row['params']:,} params, {row['macs'] / 1e6:.2f} M MACs, "
             + (f"{row['latency_ms']:.3f} ms" if row["latency_ms"] is not None else "latency not measured")
             + (f" -- {row['status']}" if row["status"] else ""))
    return row


def proxy_train(candidate: dict, config: Config, data: DatasetBundle, teacher, outputs) -> None:
    """Distill ``candidate`` for ``search.proxy_epochs`` epochs in a scratch folder; record its best
    validation scores in place."""
    started = time.perf_counter()
    proxy = with_student(config, candidate)
    proxy = dataclasses.replace(proxy, student=dataclasses.replace(
        proxy.student, train=dataclasses.replace(proxy.student.train, epochs=config.search.proxy_epochs)))
    with tempfile.TemporaryDirectory(prefix="kdistill-search-") as scratch:
        _, meta = train_student(proxy, data, Path(scratch), "distilled", teacher, resume=False,
                                teacher_outputs=outputs)
    selected = meta["selected"]
    val = {k: _finite(v) for k, v in selected["val"].items() if isinstance(v, (int, float))}
    candidate.update(val=val, score=val.get(selected["metric"]), epoch=selected["epoch"],
                     seconds=round(time.perf_counter() - started, 1), status=TRAINED)
    log.info(f"search: {candidate['label']}: validation {selected['metric']} {candidate['score']} "
             f"(epoch {selected['epoch']}, {candidate['seconds']} s)")


def with_student(config: Config, candidate: dict) -> Config:
    """``config`` with the candidate as ``student.model`` and ``student.model_args``."""
    student = dataclasses.replace(config.student, model=candidate["model"], model_args=dict(candidate["model_args"]))
    return dataclasses.replace(config, student=student)


def final_config(config: Config, best: dict, out: Path) -> Config:
    """The full run of the winner: its own folder, this search's teacher, the latency bound left to
    the search's measurement (see the module docstring)."""
    chosen = with_student(config, best)
    budget = dataclasses.replace(chosen.student.budget, latency_ms=None)
    teacher = config.teacher.checkpoint or str(out / "teacher")
    return dataclasses.replace(chosen, out=str(out / BEST_FOLDER),
                               student=dataclasses.replace(chosen.student, budget=budget),
                               teacher=dataclasses.replace(chosen.teacher, checkpoint=teacher,
                                                           members=[]))  # a saved ensemble loads as one


def mark_pareto(candidates: list[dict], lower_is_better: bool) -> None:
    """A trained candidate is on the Pareto front when no other trained one is at least as good on
    both the validation score and the latency, and better on one."""
    trained = [c for c in candidates if c["status"] == TRAINED and c["score"] is not None]
    sign = -1.0 if lower_is_better else 1.0
    for c in trained:
        c["pareto"] = not any(
            sign * o["score"] >= sign * c["score"] and o["latency_ms"] <= c["latency_ms"]
            and (sign * o["score"] > sign * c["score"] or o["latency_ms"] < c["latency_ms"])
            for o in trained if o is not c)


def ranked(candidates: list[dict], lower_is_better: bool) -> list[dict]:
    """Trained candidates best first (ties: the faster first), then the others in grid order."""
    trained = [c for c in candidates if c["status"] == TRAINED and c["score"] is not None]
    sign = 1.0 if lower_is_better else -1.0
    trained.sort(key=lambda c: (sign * c["score"], c["latency_ms"]))
    return trained + [c for c in candidates if c not in trained]


def _write_all(out: Path, config: Config, candidates: list[dict], started: float) -> dict:
    metric = config.student.train.select_metric
    lower = metric in LOWER_IS_BETTER
    mark_pareto(candidates, lower)
    rows = ranked(candidates, lower)
    best = rows[0] if rows and rows[0]["status"] == TRAINED else None
    summary = {"metric": metric, "budget": dataclasses.asdict(config.student.budget),
               "search": dataclasses.asdict(config.search), "input_size": config.data.input_size,
               "channels": student_channels(config), "seconds": round(time.perf_counter() - started, 1),
               "best": best, "candidates": rows,
               "skipped": [c["label"] for c in rows if c["status"] == SKIPPED]}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / FILES[0], summary)
    write_text_atomic(out / FILES[1], search_markdown(summary))
    figure = student_search(rows, metric, best and best["label"], config.student.budget.latency_ms)
    if figure is not None:
        with atomic_file(out / FILES[2]) as tmp:
            tmp.write_bytes(figure)
    log.info(f"search: written to {out}/ ({', '.join(FILES)})"
             + (f"; best {best['label']}, validation {metric} {best['score']:.4f}" if best else ""))
    return summary


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined score (one class in a tiny split) is written as null."""
    return None if isinstance(value, float) and math.isnan(value) else value
