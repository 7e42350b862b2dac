"""The run's output folder: the names a run writes there, where each seed's students go, clearing
an earlier run's outputs (and nothing else) before a new run, and refusing a resume whose config
differs from the saved one."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kdistill.config import Config, dump_yaml, from_dict, to_dict
from kdistill.data import DatasetBundle
from kdistill.data.cache import resolve_cache_dir
from kdistill.engine.loop import remove_resume_state
from kdistill.errors import ConfigError
from kdistill.fileio import is_leftover_of, remove_path, write_json_atomic, write_text_atomic
from kdistill.log import log


RESUME_IGNORED = {"progress", "profile", "out", "export", "threads", "tune", "search", "calibration",
                  "robustness"}  # do not change what is trained

# What a run writes in its output folder, named once: the writers use these names, and
# clear_earlier_run removes exactly these (and seed folders), never another file of the folder.
CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.json"
RESULTS_FILE = "results.json"
REPORT_FILES = ("report.md", "report.html")
SUMMARY_FILES = (RESULTS_FILE, *REPORT_FILES)  # describe the models: stale once one is retrained
MODEL_FOLDERS = ("teacher", "baseline", "distilled")  # each model's checkpoint, named after its role
RESUME_FOLDER = "resume"
RUN_OUTPUTS = (*SUMMARY_FILES, CONFIG_FILE, SPLITS_FILE, *MODEL_FOLDERS, RESUME_FOLDER)
SEED_FOLDER = re.compile(r"seed-?[0-9]+")  # seed<k>/ holds one seed's students (``seeds`` list)
METHOD_FOLDER = re.compile(r"distilled-[A-Za-z0-9_]+")  # one per method of a ``distill.methods`` comparison


def student_folders(config: Config, out: Path) -> list[tuple[int, Path]]:
    """``(seed, folder)`` of every student pair: ``out`` itself for a single-seed run
    (``seeds: null``), ``out/seed<k>`` for each seed of a ``seeds`` list."""
    if config.seeds is None:
        return [(config.seed, out)]
    return [(seed, out / f"seed{seed}") for seed in config.seeds]  # names SEED_FOLDER matches


def check_out_folder(out: Path) -> None:
    """The output folder must be a folder (or not exist yet) below folders, not files."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"{path}: the output folder (out / --out) would be inside a file")
            return


def check_resume_config(out: Path, config: Config) -> None:
    """Resuming with a different config would mix two experiments in one folder: refuse it."""
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        return
    try:
        saved = to_dict(from_dict(yaml.safe_load(saved_path.read_text())))
    except (yaml.YAMLError, ConfigError) as exc:
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


def clear_earlier_run(out: Path, config: Config, names: tuple[str, ...]) -> None:
    """Remove the entries of ``out`` called ``names`` (and leftovers of their atomic writes) before a
    run without ``resume`` writes there, so it never leaves old and new outputs side by side. Every
    other file stays, and so does an entry holding one of this config's inputs (a teacher
    checkpoint or tuned file inside the folder).

    Removing up front rather than staging the run in a sibling folder and swapping it in at the end:
    an interrupted run must stay resumable where it ran (``--resume`` reads ``out``), the paths
    written into model.json and results.json must name the final folder, and a folder that also
    holds the user's own files cannot be swapped in one rename.
    """
    if not out.is_dir():
        return
    inputs = _input_paths(config)
    removed, kept = [], []
    for entry in sorted(out.iterdir(), key=_summaries_first):
        shown = entry.name + ("/" if entry.is_dir() else "")
        if not _named(entry.name, names):
            kept.append(shown)
        elif _holds_an_input(entry, inputs):
            kept.append(f"{shown} (this run reads it)")
        else:
            remove_path(entry)
            removed.append(shown)
    if removed:
        log.info(f"{out}: removed the earlier run's {', '.join(removed)} before writing the new one"
                 + (f"; left {_listed(kept)} in place" if kept else ""))


def clear_earlier_model(out: Path, role: str, config: Config) -> None:
    """``kdistill train`` without ``resume``: remove this role's earlier checkpoint and resume
    state, and the results.json and reports that described it, before training it again. The
    other roles' checkpoints stay: training one model at a time builds a run folder step by step
    (``--role distilled`` reads the teacher trained there before), so they are inputs, not leftovers."""
    clear_earlier_run(out, config, (*SUMMARY_FILES, role))
    remove_resume_state(out / RESUME_FOLDER / role)


def earlier_run_outputs(out: Path) -> tuple[str, ...]:
    """What ``kdistill run`` writes, plus the seed folders found in ``out`` (an earlier run may
    have used other seeds than this one)."""
    seeds = [entry.name for entry in out.iterdir() if _is_seed_folder(entry)] if out.is_dir() else []
    methods = [entry.name for entry in out.iterdir() if METHOD_FOLDER.fullmatch(entry.name)] if out.is_dir() else []
    return (*RUN_OUTPUTS, *sorted(seeds), *sorted(methods))


def _is_seed_folder(entry: Path) -> bool:
    """``seed<k>/`` holding only what a run writes there; one holding anything else is the user's."""
    if not (SEED_FOLDER.fullmatch(entry.name) and entry.is_dir()) or entry.is_symlink():
        return False
    run_names = (*MODEL_FOLDERS[1:], RESUME_FOLDER)  # the students and their resume state
    return all(_named(child.name, run_names) or METHOD_FOLDER.fullmatch(child.name) for child in entry.iterdir())


def _named(entry_name: str, names: tuple[str, ...]) -> bool:
    """``entry_name`` is one of ``names``, or a leftover of an atomic write of one."""
    return any(entry_name == name or is_leftover_of(entry_name, name) for name in names)


def _summaries_first(entry: Path) -> tuple[bool, str]:
    """Sort key: the summaries (results.json, reports) go first, so a removal cut short never
    leaves a results file describing models already gone."""
    return entry.name not in SUMMARY_FILES, entry.name


def _input_paths(config: Config) -> list[Path]:
    """The files and folders this config reads, resolved."""
    given = (config.teacher.checkpoint, config.teacher.weights, config.tuned, config.data.root,
             resolve_cache_dir(config.data.cache_dir))
    return [Path(path).expanduser().resolve() for path in given if path]


def _holds_an_input(entry: Path, inputs: list[Path]) -> bool:
    target = entry.resolve()
    return any(path == target or target in path.parents for path in inputs)


def _listed(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it is an empty folder (a resume folder whose models all finished);
    a folder still holding anything stays."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
