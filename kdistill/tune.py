"""``kdistill tune``: search ``distill.alpha``, ``distill.temperature`` and ``student.train.lr`` with
Optuna, scoring every trial on the validation split only.

The teacher is trained once (or loaded from ``teacher.checkpoint``) and its outputs are cached once
for all trials; each trial trains the distilled student exactly as ``kdistill run`` does and is
scored by its best validation ``student.train.select_metric``. The test split is replaced by a
guard before anything trains, so a selection on test data fails instead of passing silently.
Trials live in memory only (no study database). Output folder::

    trials.csv   one row per trial: number, alpha, temperature, lr, value, state, epoch, seconds
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
from kdistill.data import DatasetBundle, load_dataset
from kdistill.errors import ConfigError, KdistillError
from kdistill.fileio import write_text_atomic
from kdistill.log import log
from kdistill.pipeline import (prepare_teacher_outputs, remove_if_empty, seed_everything, train_student,
                               train_teacher)
from kdistill.engine.loop import LOWER_IS_BETTER

# Search name -> config key; log=True where the search runs on a log scale.
SEARCH = {"alpha": ("distill.alpha", False), "temperature": ("distill.temperature", True),
          "lr": ("student.train.lr", True)}
CSV_COLUMNS = ["number", *SEARCH, "value", "state", "epoch", "seconds"]


class ForbiddenTestSplit:
    """Stands in for the test split while tuning: touching it is a bug, so it raises. Not a
    KdistillError, so Optuna does not record it as one failed trial and carry on."""

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("kdistill tune: the test split was used; tuning may only see train and val")

    __getattr__ = __len__ = __iter__ = __getitem__ = _refuse


def tune(config: Config, out: Path, trials: int | None = None) -> dict:
    """Run the search; write ``trials.csv`` and ``best.yaml`` to ``out``; return the best trial."""
    optuna = _import_optuna()
    _check_tunable(config)
    trials = trials or config.tune.trials
    seed_everything(config.seed, config.deterministic, config.threads)
    data = dataclasses.replace(load_dataset(**dataclasses.asdict(config.data)), test=ForbiddenTestSplit())
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
    study.optimize(objective, n_trials=trials, catch=(KdistillError,),
                   callbacks=[lambda study, _: _write_trials(out / "trials.csv", study)])
    _write_trials(out / "trials.csv", study)
    return _write_best(out / "best.yaml", study, metric)


class _Objective:
    """One trial: train the distilled student with the proposed values; return its best val score."""

    def __init__(self, config: Config, data: DatasetBundle, teacher, outputs):
        self.config, self.data, self.teacher, self.outputs = config, data, teacher, outputs

    def __call__(self, trial) -> float:
        started = time.perf_counter()
        values = {name: trial.suggest_float(name, *getattr(self.config.tune, name), log=log_scale)
                  for name, (_, log_scale) in SEARCH.items()}
        log.info(f"tune trial {trial.number}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        try:
            with tempfile.TemporaryDirectory(prefix="kdistill-trial-") as scratch:
                _, meta = train_student(with_values(self.config, values), self.data, Path(scratch),
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


def with_values(config: Config, values: dict[str, float]) -> Config:
    """``config`` with a trial's alpha, temperature and lr in place."""
    distill = dataclasses.replace(config.distill, alpha=values["alpha"], temperature=values["temperature"])
    train = dataclasses.replace(config.student.train, lr=values["lr"])
    return dataclasses.replace(config, distill=distill, student=dataclasses.replace(config.student, train=train))


def _prepare_teacher(config: Config, data: DatasetBundle, out: Path):
    """The frozen teacher (loaded, or trained once into ``out/teacher``) and its outputs, computed
    once for every trial."""
    teacher, _ = train_teacher(config, data, out, resume=False)
    remove_if_empty(out / "resume")
    return teacher, prepare_teacher_outputs(teacher, data, config)


def _write_trials(path: Path, study) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for trial in study.trials:
        writer.writerow({"number": trial.number, **trial.params, "value": trial.value,
                         "state": trial.state.name, "epoch": trial.user_attrs.get("epoch"),
                         "seconds": trial.user_attrs.get("seconds")})
    write_text_atomic(path, buffer.getvalue())


def _write_best(path: Path, study, metric: str) -> dict:
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not completed:
        raise KdistillError(f"tune: all {len(study.trials)} trials failed (see the log); nothing written to {path}")
    best = study.best_trial
    fragment: dict = {}
    for name, (key, _) in SEARCH.items():
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
    if config.distill.method != "kd":
        raise ConfigError(f"distill.method: tune searches alpha and temperature, which the "
                          f"{config.distill.method!r} recipe fixes; use method kd")


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise KdistillError("kdistill tune needs Optuna: pip install 'kdistill[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdistill logs each trial itself
    return optuna
