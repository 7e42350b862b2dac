"""``kdistill tune``: search ``student.train.lr`` and the distillation method's parameters with
Optuna, scoring every trial on the validation split only. What is searched comes from the method
registry: ``distill.alpha`` and ``distill.temperature`` (ranges in ``tune``) for a method that
shares them (kd), and the method's own declared search space (``distill.params.<method>.<name>``).

The teacher is trained once (or loaded from ``teacher.checkpoint``) and its outputs are cached once
for all trials; each trial trains the distilled student exactly as ``kdistill run`` does and is
scored by its best validation ``student.train.select_metric``. The test split is replaced by a
guard before anything trains, so a selection on test data fails instead of passing silently.
Trials live in memory only (no study database). Output folder::

    trials.csv   one row per trial: number, the searched values, value, state, epoch, seconds
    best.yaml    the best values as a config fragment: kdistill run CONFIG --tuned best.yaml
    teacher/     the teacher, when it was trained here (reuse: teacher.checkpoint=.../teacher)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import tempfile
import time
from pathlib import Path

import yaml

from kdistill.config import Config
from kdistill.distill.registry import search_space, shared_keys
from kdistill.data import DatasetBundle, load_dataset
from kdistill.data.split import ForbiddenTestSplit
from kdistill.errors import ConfigError, KdistillError
from kdistill.fileio import write_text_atomic
from kdistill.log import log
from kdistill.distill.inputs import prepare_teacher_outputs
from kdistill.output_folder import plan_output
from kdistill.preflight import check_before_data
from kdistill.run_folder import RESUME_FOLDER, input_paths, remove_if_empty
from kdistill.pipeline import seed_everything, train_student, train_teacher
from kdistill.engine.resume import LOWER_IS_BETTER

OUTPUTS = ("trials.csv", "best.yaml")
# Shared search name -> (config key, log scale); their ranges are the tune section's.
SHARED_SEARCH = {"alpha": ("distill.alpha", False), "temperature": ("distill.temperature", True),
                 "lr": ("student.train.lr", True)}
# The config keys a best.yaml may set (``--tuned``): the shared ones, and a method's own parameters.
TUNED_KEYS = tuple(key for key, _ in SHARED_SEARCH.values())
TUNED_PARAMS_PREFIX = "distill.params."


def search_for(config: Config) -> dict[str, tuple[str, float, float, bool]]:
    """Search name -> (config key, low, high, log) for the configured method: what it shares of
    alpha / temperature, its own declared space, and the learning rate."""
    method = config.distill.method
    space = {}
    for name in (*shared_keys(method), "lr"):
        key, log_scale = SHARED_SEARCH[name]
        space[name] = (key, *getattr(config.tune, name), log_scale)
    for name, (low, high, log_scale) in search_space(method).items():
        space[name] = (f"{TUNED_PARAMS_PREFIX}{method}.{name}", low, high, log_scale)
    return space


def tune(config: Config, out: Path, trials: int | None = None, overwrite: bool = False) -> dict:
    """Run the search; write ``trials.csv`` and ``best.yaml`` to ``out``; return the best trial.
    ``overwrite``: replace files in ``out`` that no kdistill command recorded writing."""
    optuna = _import_optuna()
    _check_tunable(config)
    targets = [*OUTPUTS, RESUME_FOLDER] + ([] if config.teacher.checkpoint else ["teacher"])
    folder = plan_output(out, targets, overwrite=overwrite, inputs=input_paths(config))
    check_before_data(config, ("teacher", "student"), budget=False)  # the budget is `run`'s to enforce
    trials = trials or config.tune.trials
    seed_everything(config.seed, config.deterministic, config.threads)
    data = dataclasses.replace(load_dataset(config.data), test=ForbiddenTestSplit("kdistill tune"))
    folder.open()
    log.info(f"tune: {trials} trials on train {len(data.train)} / val {len(data.val)} images "
             f"(the test split is not used)")
    teacher, outputs = _prepare_teacher(config, data, out)
    metric = config.student.train.select_metric
    study = optuna.create_study(
        direction="minimize" if metric in LOWER_IS_BETTER else "maximize",
        # Seeded, so a re-run proposes the same trials; half the budget (at most optuna's
        # default 10) explores at random before TPE models the results.
        sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=min(10, max(1, trials // 2))))
    objective = _Objective(config, data, teacher, outputs)
    columns = list(objective.space)
    study.optimize(objective, n_trials=trials, catch=(KdistillError,),
                   callbacks=[lambda study, _: _write_trials(out / OUTPUTS[0], study, columns)])
    _write_trials(out / OUTPUTS[0], study, columns)
    best = _write_best(out / OUTPUTS[1], study, metric, objective.space)
    folder.close()
    return best


class _Objective:
    """One trial: train the distilled student with the proposed values; return its best val score."""

    def __init__(self, config: Config, data: DatasetBundle, teacher, outputs):
        self.config, self.data, self.teacher, self.outputs = config, data, teacher, outputs
        self.space = search_for(config)

    def __call__(self, trial) -> float:
        started = time.perf_counter()
        values = {name: trial.suggest_float(name, low, high, log=log_scale)
                  for name, (_, low, high, log_scale) in self.space.items()}
        log.info(f"tune trial {trial.number}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        try:
            with tempfile.TemporaryDirectory(prefix="kdistill-trial-") as scratch:
                _, meta = train_student(with_values(self.config, values, self.space), self.data, Path(scratch),
                                        "distilled", self.teacher, resume=False, teacher_outputs=self.outputs)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        selected = meta["selected"]
        trial.set_user_attr("epoch", selected["epoch"])
        score = selected["val"].get(selected["metric"])
        if score is None or math.isnan(score):
            raise KdistillError(f"trial {trial.number}: validation {selected['metric']} is undefined")
        log.info(f"tune trial {trial.number}: validation {selected['metric']} {score:.4f} "
                 f"(epoch {selected['epoch']})")
        return float(score)


def with_values(config: Config, values: dict[str, float], space: dict | None = None) -> Config:
    """``config`` with a trial's values in place (``space``: search name -> config key, as
    ``search_for`` gives; default: alpha, temperature and lr)."""
    space = space or {name: (key,) for name, (key, _) in SHARED_SEARCH.items()}
    keys = {space[name][0]: value for name, value in values.items()}
    distill, train = config.distill, config.student.train
    params = {method: dict(own) for method, own in distill.params.items()}
    for key, value in keys.items():
        if key == "student.train.lr":
            train = dataclasses.replace(train, lr=value)
        elif key.startswith(TUNED_PARAMS_PREFIX):
            method, name = key.split(".")[2:]
            params.setdefault(method, {})[name] = value
        else:
            distill = dataclasses.replace(distill, **{key.split(".")[1]: value})
    distill = dataclasses.replace(distill, params=params)
    return dataclasses.replace(config, distill=distill, student=dataclasses.replace(config.student, train=train))


def _prepare_teacher(config: Config, data: DatasetBundle, out: Path):
    """The frozen teacher (loaded, or trained once into ``out/teacher``) and its outputs, computed
    once for every trial."""
    teacher, _ = train_teacher(config, data, out, resume=False)
    remove_if_empty(out / "resume")
    return teacher, prepare_teacher_outputs(teacher, data, config)


def _write_trials(path: Path, study, searched: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["number", *searched, "value", "state", "epoch", "seconds"],
                            lineterminator="\n")
    writer.writeheader()
    for trial in study.trials:
        writer.writerow({"number": trial.number, **trial.params, "value": trial.value,
                         "state": trial.state.name, "epoch": trial.user_attrs.get("epoch"),
                         "seconds": trial.user_attrs.get("seconds")})
    write_text_atomic(path, buffer.getvalue())


def _write_best(path: Path, study, metric: str, space: dict) -> dict:
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not completed:
        raise KdistillError(f"tune: all {len(study.trials)} trials failed (see the log); nothing written to {path}")
    best = study.best_trial
    fragment: dict = {}
    for name, (key, *_) in space.items():
        *sections, leaf = key.split(".")
        node = fragment
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = best.params[name]
    header = (f"# kdistill tune: trial {best.number} of {len(study.trials)}, validation {metric} "
              f"{best.value:.4f} (test split not used).\n# Use: kdistill run CONFIG.yaml --tuned {path}\n")
    write_text_atomic(path, header + yaml.safe_dump(fragment, sort_keys=False))
    log.info(f"tune: best trial {best.number}, validation {metric} {best.value:.4f}: "
             + ", ".join(f"{k} {v:.4g}" for k, v in best.params.items()) + f"; written to {path}")
    return {"number": best.number, "value": best.value, "params": dict(best.params), "metric": metric}


def _check_tunable(config: Config) -> None:
    method = config.distill.method
    if not shared_keys(method) and not search_space(method):
        raise ConfigError(f"distill.method: the {method!r} recipe fixes its parameters and declares "
                          f"nothing to search; use a method with parameters (kd, dkd, dist, ...)")


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise KdistillError("kdistill tune needs Optuna: pip install 'kdistill[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdistill logs each trial itself
    return optuna
