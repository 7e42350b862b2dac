"""The run's output folder: the names a run writes there (its targets, which
``kdistill.output_folder`` checks and records), where each seed's students go, and refusing
a resume that has nothing to continue or whose config differs from the saved one."""

from __future__ import annotations

from pathlib import Path

import yaml

from kdistill.config import Config, dump_yaml, from_dict, teacher_members, to_dict
from kdistill.data import DatasetBundle
from kdistill.data.cache import resolve_cache_dir
from kdistill.distill.method_runs import distilled_runs
from kdistill.engine.resume import previous_state_dir
from kdistill.output_folder import OutputPlan, check_out_folder, plan_output
from kdistill.errors import ConfigError
from kdistill.fileio import write_json_atomic, write_text_atomic


RESUME_IGNORED = {"progress", "profile", "out", "export", "threads", "tune", "search", "calibration",
                  "robustness"}  # do not change what is trained

# What a run writes in its output folder, named once: the writers use these names, and
# run_targets lists them for the manifest.
CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.json"
RESULTS_FILE = "results.json"
REPORT_FILES = ("report.md", "report.html")
SUMMARY_FILES = (RESULTS_FILE, *REPORT_FILES)  # describe the models: stale once one is retrained
MODEL_FOLDERS = ("teacher", "baseline", "distilled")  # each model's checkpoint, named after its role
RESUME_FOLDER = "resume"


def student_folders(config: Config, out: Path) -> list[tuple[int, Path]]:
    """``(seed, folder)`` of every student pair: ``out`` itself for a single-seed run
    (``seeds: null``), ``out/seed<k>`` for each seed of a ``seeds`` list."""
    if config.seeds is None:
        return [(config.seed, out)]
    return [(seed, out / f"seed{seed}") for seed in config.seeds]


def run_targets(config: Config) -> list[str]:
    """What ``kdistill run`` writes in its folder, relative to it: config, splits, summaries, the
    teacher (unless ``teacher.checkpoint`` gives one), and per seed the students and resume state."""
    targets = [CONFIG_FILE, SPLITS_FILE, *SUMMARY_FILES, RESUME_FOLDER]
    targets += [] if config.teacher.checkpoint else [MODEL_FOLDERS[0]]
    for _, folder in student_folders(config, Path()):
        names = [MODEL_FOLDERS[1], *(name for _, name in distilled_runs(config)), RESUME_FOLDER]
        targets += [(folder / name).as_posix() for name in names]
    return list(dict.fromkeys(targets))


def train_targets(role: str) -> list[str]:
    """What ``kdistill train --role ROLE`` writes: its checkpoint, its resume state (the newest and
    the one before it), config and splits. The other roles' checkpoints stay: training one model at a
    time builds a run folder step by step."""
    state = Path(RESUME_FOLDER) / role
    return [CONFIG_FILE, SPLITS_FILE, role, state.as_posix(), previous_state_dir(state).as_posix()]


def plan_run_folder(config: Config, targets: list[str], *, resume: bool, overwrite: bool,
                    replace_all: bool = True, also_reads: tuple[Path, ...] = ()) -> OutputPlan:
    """Check ``config.out`` for a ``run`` or ``train`` writing ``targets`` (see
    ``kdistill.output_folder``), and a resume's saved config; writes nothing. ``train``
    replaces only its own model and the summaries that described it (``replace_all=False``)."""
    out = Path(config.out)
    if resume:
        check_out_folder(out)
        check_resume_config(out, config)
    return plan_output(out, targets, resume=resume, overwrite=overwrite, replace_all=replace_all,
                       stale=SUMMARY_FILES, inputs=[*input_paths(config), *also_reads])


def input_paths(config: Config) -> list[Path]:
    """The files and folders this config reads, which no run may remove: a teacher checkpoint or
    tuned file inside the output folder stays."""
    members = teacher_members(config.teacher)
    given = (config.teacher.checkpoint, config.teacher.weights, config.tuned, config.data.root,
             config.data.unlabeled, resolve_cache_dir(config.data.cache_dir),
             *(path for member in members for path in (member.checkpoint, member.weights)))
    return [Path(path).expanduser().resolve() for path in given if path]


def check_resume_config(out: Path, config: Config) -> None:
    """Resuming with a different config would mix two experiments in one folder, and resuming
    where no run started would silently start a fresh one: refuse both."""
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        raise ConfigError(f"{out}: nothing to resume (no {CONFIG_FILE} of an earlier run); run "
                          f"without --resume to start one")
    try:
        saved = to_dict(from_dict(yaml.safe_load(saved_path.read_text())))
    except (yaml.YAMLError, ConfigError, ValueError) as exc:  # ValueError: not UTF-8 text
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{saved_path}: cannot compare with the saved config ({reason}); "
                          f"restore it or start over without --resume") from None
    current = to_dict(config)
    for settings in (saved, current):  # where decoded images are cached does not change them
        settings["data"].pop("cache_dir", None)
    for section in saved:
        if section not in RESUME_IGNORED and saved[section] != current[section]:
            raise ConfigError(f"{section}: differs from {saved_path}; resume with the same config "
                              f"or choose another --out")


def write_run_files(out: Path, config: Config, data: DatasetBundle) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG_FILE, dump_yaml(config))
    splits = {name: {"files": split.names, "labels": split.labels.tolist(), "groups": split.groups}
              for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}
    write_json_atomic(out / SPLITS_FILE, splits)


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it is an empty folder (a resume folder whose models all finished);
    a folder still holding anything stays."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
