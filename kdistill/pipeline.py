"""``run(config)``: data -> teacher -> student alone -> student distilled -> evaluate -> report.

Output folder (``config.out``)::

    config.yaml      the resolved config (every key, defaults included)
    splits.json      the files of each split, so anyone can check the patient grouping
    teacher/         checkpoint: model.safetensors + model.json (incl. training history)
    baseline/        the student trained alone
    distilled/       the same student, same initialization and recipe, distilled from the teacher
    results.json     metrics on the test split, size and CPU speed of every model, mean +- std,
                     paired tests, test probabilities
    report.md        the comparison table, mean +- std, the paired test and its verdict
    report.html      the same as one self-contained page with plots (kdistill report RUN_DIR rewrites both)
    resume/<role>/   training state of an unfinished model (removed when the model is done)

Seeds: with ``seeds: null`` (the default) the students use ``seed`` and live in ``baseline/`` and
``distilled/`` as above. With ``seeds: [0, 1, 2]`` the teacher is still trained once (with ``seed``)
and each seed k gets its own pair in ``seed<k>/baseline/`` and ``seed<k>/distilled/`` (resume state
in ``seed<k>/resume/``); baseline and distilled of one seed start from the same initialization.
The exported ONNX copy is the distilled student of the first seed listed.

Every checkpoint's decision threshold and temperature are fitted on the validation split right
after training (``kdistill.eval.calibration``) and written into its model.json.

A run without ``resume`` into a folder that holds an earlier run first removes the earlier run's
files (the names above, and the temporary names of their atomic writes), so an interrupted run
never leaves new and old outputs side by side; every other file in the folder stays
(``clear_earlier_run``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import platform
import re
import time
from pathlib import Path

import torch
import yaml

from kdistill import __version__
from kdistill.engine import distributed
from kdistill.eval.calibration import calibrate
from kdistill.models.checkpoint import architecture, load_checkpoint, read_meta, update_meta
from kdistill.config import TUNED_KEYS, Config, dump_yaml, from_dict, to_dict
from kdistill.data import DatasetBundle, load_dataset
from kdistill.data.datasets import with_unlabeled
from kdistill.data.views import VIEW_WIDTH, AugmentSpec, draw_views, materialize_views, materialized_bytes
from kdistill.data.cache import resolve_cache_dir
from kdistill.distill import CachedTeacher, FeatureTeacher, HeadOnStoredFeatures, LiveTeacher, build_method, freeze
from kdistill.distill.registry import method_defaults, needs_of, search_space, shared_keys, two_class_note
from kdistill.distill.teacher import FLIP_VIEWS, tensor_sha256
from kdistill.data.doctor import examine
from kdistill.deploy.budget import enforce_budget
from kdistill.errors import CheckpointError, ConfigError, DataError
from kdistill.eval.evaluate import add_speed, evaluate_model, run_statistics
from kdistill.eval.inference import predict_logits
from kdistill.fileio import is_leftover_of, remove_path, write_json_atomic, write_text_atomic
from kdistill.log import log
from kdistill.models import build_model, find_head
from kdistill.models.channels import ChannelAdapter
from kdistill.models.fast_path import set_fast_path
from kdistill.models.stages import freeze_all_but, partial_trainable
from kdistill.models.weights import PACKAGED, packaged_weights_file
from kdistill.data.transforms import normalization
from kdistill.engine.precision import resolve_device
from kdistill.report.markdown import comparison_table, markdown_report
from kdistill.report.html import html_report
from kdistill.engine.loop import class_weights, fit, remove_resume_state


RESUME_IGNORED = {"progress", "profile", "out", "export", "threads", "tune", "search", "calibration"}  # do not change what is trained

# What a run writes in its output folder, named once: the writers below use these names, and
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


def run(config: Config, resume: bool = False) -> dict:
    """Run the whole pipeline; return the ``results.json`` content (also written to disk)."""
    started = time.perf_counter()
    out = Path(config.out)
    check_out_folder(out)
    if resume:
        check_resume_config(out, config)
    seed_everything(config.seed, config.deterministic, config.threads)
    with distributed.main_first(distributed.current()):  # torchrun: decode once, into the cache
        data = load_dataset(**dataclasses.asdict(config.data))
    _log_data(data)
    _require_every_class(data)
    world = distributed.current()  # under torchrun: rank 0 checks, evaluates and writes
    findings = _run_doctor(config) if world.is_main else None
    # Fail now, before anything is written or the teacher has trained.
    check_models_build(config, data, ("teacher", "student"))
    if world.is_main:
        if not resume:
            clear_earlier_run(out, config, earlier_run_outputs(out))
        _write_run_files(out, config, data)
    teacher, teacher_meta = train_teacher(config, data, out, resume)
    if not world.is_main:
        train_and_evaluate_students(config, data, out, teacher, resume)  # trains only, on these ranks
        return {}
    evaluated = [(*_evaluate(teacher, teacher_meta, data, "teacher", out / "teacher", config),
                  (teacher, teacher_meta))]
    evaluated += train_and_evaluate_students(config, data, out, teacher, resume)
    rows = [row for row, _, _ in evaluated]
    add_speed(rows, {row["id"]: model for row, _, model in evaluated}, **dataclasses.asdict(config.profile))
    first_seed = student_folders(config, out)[0][1]
    deployment = _export_student(first_seed / distilled_runs(config)[0][1], data) if config.export else None
    statistics = run_statistics(rows, {row["id"]: probs for row, probs, _ in evaluated},
                                data.test.labels.numpy(), data.positive_index)
    results = {"kdistill_version": __version__, "dataset": _dataset_summary(data), "models": rows,
               **statistics,
               "export": deployment, "doctor": findings, "tuned": _tuned(config),
               "machine": {"platform": platform.platform(), "torch": torch.__version__},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / RESULTS_FILE, results)
    write_reports(out, results)
    for _, folder in student_folders(config, out):
        remove_if_empty(folder / RESUME_FOLDER)
    remove_if_empty(out / RESUME_FOLDER)
    log.info("\n" + comparison_table(results) + f"\n\nwritten to {out}/ (results.json, report.md, report.html)")
    return results


def write_reports(out: Path, results: dict) -> None:
    """``report.md`` and the self-contained ``report.html`` (with the run's resolved config)."""
    markdown_file, html_file = REPORT_FILES
    write_text_atomic(out / markdown_file, markdown_report(results) + _tuned_note(results.get("tuned")))
    config_path = out / CONFIG_FILE
    config_yaml = config_path.read_text() if config_path.is_file() else "(config.yaml not found)"
    write_text_atomic(out / html_file, html_report(results, config_yaml))


def regenerate_reports(run_dir: Path) -> None:
    """``kdistill report RUN_DIR``: rewrite both reports from the folder's ``results.json``."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; give the output folder of a kdistill run")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    write_reports(run_dir, results)
    log.info(f"written to {run_dir}/ (report.md, report.html)")


def student_folders(config: Config, out: Path) -> list[tuple[int, Path]]:
    """``(seed, folder)`` of every student pair: ``out`` itself for a single-seed run
    (``seeds: null``), ``out/seed<k>`` for each seed of a ``seeds`` list."""
    if config.seeds is None:
        return [(config.seed, out)]
    return [(seed, out / f"seed{seed}") for seed in config.seeds]  # names SEED_FOLDER matches


def distilled_runs(config: Config) -> list[tuple[str, str]]:
    """``(method, folder)`` of each distilled student of a seed: ``distilled/`` for ``distill.method``
    alone, ``distilled-<method>/`` for every method of a ``distill.methods`` comparison."""
    if config.distill.methods is None:
        return [(config.distill.method, "distilled")]
    return [(method, f"distilled-{method}") for method in config.distill.methods]


def with_method(config: Config, method: str) -> Config:
    return dataclasses.replace(config, distill=dataclasses.replace(config.distill, method=method))


def train_and_evaluate_students(config: Config, data: DatasetBundle, out: Path, teacher,
                                resume: bool) -> list[tuple[dict, object, tuple]]:
    """Baseline and distilled student(s) for every seed (the same initialization per seed for all),
    each evaluated on the test split as soon as it is trained: ``(row, test probabilities,
    (model, meta))`` per student (the model is timed later, beside the teacher). The teacher's outputs are
    computed once per kind (cached logits, live features), and only if a student still needs them."""
    runs = distilled_runs(config)
    pending = [method for method, name in runs for _, folder in student_folders(config, out)
               if not (resume and (folder / name / "model.json").is_file())]
    outputs: dict[str, object] = {}
    with distributed.main_first(distributed.current()):  # torchrun: computed once, into the cache
        for method in pending:
            teacher_outputs_for(method, teacher, data, config, outputs)
    evaluated = []
    for seed, folder in student_folders(config, out):
        seeded = dataclasses.replace(config, seed=seed)
        students = [("baseline", "baseline", "ce", None)]
        students += [("distilled", name, method,
                      None if resume and (folder / name / "model.json").is_file()  # reused, not trained
                      else teacher_outputs_for(method, teacher, data, config, outputs))
                     for method, name in runs]
        for role, name, method, method_outputs in students:
            model, meta = train_student(with_method(seeded, method) if role == "distilled" else seeded,
                                        data, folder, role, teacher, resume, method_outputs, folder_name=name)
            if not distributed.current().is_main:
                continue
            row, probs = _evaluate(model, meta, data, role, folder / name, config)
            row["id"], row["seed"] = f"{name}-seed{seed}", seed
            row.update(method_columns(row, method, len(data.classes), compared=len(runs) > 1 and role == "distilled"))
            evaluated.append((row, probs, (model, meta)))
    return evaluated


def method_columns(row: dict, method: str, num_classes: int, compared: bool) -> dict:
    """A student row's ``method``, its training cost (mean seconds per epoch, from the history), the
    two-class degeneracy note where it applies, and in a comparison the ``group`` its mean ± std
    and paired tests are reported under."""
    seconds = [entry["seconds"] for entry in row.get("history") or [] if "seconds" in entry]
    columns = {"method": method, "seconds_per_epoch": round(sum(seconds) / len(seconds), 3) if seconds else None}
    note = two_class_note(method, num_classes)
    if note:
        columns["degenerate"] = note
    if compared:
        columns["group"] = f"distilled-{method}"
    return columns


def teacher_outputs_for(method: str, teacher, data: DatasetBundle, config: Config, prepared: dict):
    """The teacher outputs ``method`` reads, prepared once per kind into ``prepared``."""
    kind = "features" if "features" in needs_of(method) else "logits"
    if kind not in prepared:
        prepared[kind] = prepare_teacher_outputs(teacher, data, config, method)
    return prepared[kind]


def train_teacher(config: Config, data: DatasetBundle, out: Path, resume: bool):
    """Fine-tune the teacher (or load the one given in ``teacher.checkpoint``); return it frozen."""
    cfg = config.teacher
    if cfg.checkpoint:
        model, meta = load_checkpoint(cfg.checkpoint)
        _check_same_data(meta, data, cfg.checkpoint)
        meta = {**meta, **fit_calibration(model, meta, data, config)}  # in memory: not the user's folder
        return freeze(model), meta
    checkpoint_dir = out / "teacher"
    if resume and (checkpoint_dir / "model.json").is_file():
        log.info(f"teacher: already trained in {checkpoint_dir}, reusing it")
        model, meta = _calibrated(checkpoint_dir, data, config)
        return freeze(model), meta
    torch.manual_seed(config.seed)
    arch = architecture(cfg.model, len(data.classes), data.input_size, data.channels, cfg.model_args)
    model = build_model(**{"name": cfg.model, **arch["args"]}, pretrained=cfg.pretrained, weights=cfg.weights)
    method = build_method("ce", class_weights=_weights(cfg.train, data))
    if cfg.mode == "head":
        if distributed.current().active:
            # The head trains outside the DDP wrapper, so its gradients would not be averaged.
            raise ConfigError("teacher.mode: head trains on one process only; run it without torchrun "
                              "(or use teacher.mode=full)")
        freeze_all_but_head(model)
        method = _head_on_features(method, model, data, config)
    elif cfg.mode == "partial":
        trainable = partial_trainable(model, cfg.trainable_blocks, cfg.trainable_prefixes)
        freeze_all_but(model, trainable)
        log.info(f"teacher: partial fine-tuning, {len(trainable)} of "
                 f"{len(list(model.parameters()))} parameter tensors train (from {trainable[0]})")
    partial = {"trainable_blocks": cfg.trainable_blocks, "trainable_prefixes": cfg.trainable_prefixes}
    meta = _meta(arch, data, "teacher", {"mode": cfg.mode, **(partial if cfg.mode == "partial" else {}),
                                         "pretrained": cfg.pretrained,
                                         "weights": cfg.weights, **dataclasses.asdict(cfg.train)}, config.seed)
    # Fresh views of data.augment every step; head mode's stored features exist for flips only.
    fit_data = dataclasses.replace(data, augment=None) if cfg.mode == "head" else data
    _fit(model, method, fit_data, "teacher", checkpoint_dir, meta, out, None, cfg.train, config, resume)
    model, meta = _calibrated(checkpoint_dir, data, config)
    return freeze(model), meta


def train_student(config: Config, data: DatasetBundle, out: Path, role: str, teacher, resume: bool,
                  teacher_outputs=None, folder_name: str | None = None):
    """Train the student alone (``baseline``) or distilled from the teacher (``distilled``).

    Both start from the same initialization (same seed) and use the same recipe, so the only
    difference between them is the loss. ``teacher_outputs`` (a CachedTeacher) lets a caller that
    trains many students (``kdistill tune``) compute the teacher's outputs once. ``folder_name``
    (default: the role) names the checkpoint's folder: ``distilled-<method>`` in a comparison.
    """
    cfg, dcfg = config.student, config.distill
    folder_name = folder_name or role
    checkpoint_dir = out / folder_name
    if resume and (checkpoint_dir / "model.json").is_file():
        log.info(f"{role}: already trained in {checkpoint_dir}, reusing it")
        return _calibrated(checkpoint_dir, data, config)
    torch.manual_seed(config.seed)
    teacher_data, data = data, student_data(config, data, role)  # the teacher's outputs read teacher_data
    arch = architecture(cfg.model, len(data.classes), data.input_size, data.channels, cfg.model_args)
    model = set_fast_path(build_model(**{"name": cfg.model, **arch["args"]}), cfg.fast_path)
    weights = _weights(cfg.train, data)
    if role == "baseline":
        method, teacher_outputs, extra = build_method("ce", class_weights=weights), None, {"method": "ce"}
    else:
        check_unlabeled_method(config, data)
        method = build_method(dcfg.method, class_weights=weights, **method_arguments(config))
        if teacher_outputs is None:
            teacher_outputs = prepare_teacher_outputs(teacher, teacher_data, config, dcfg.method)
        if hasattr(method, "bind"):  # feature methods: layers and connectors sized by one probe forward
            method.bind(model, teacher_outputs, torch.zeros(1, data.channels, data.input_size, data.input_size))
        note = two_class_note(dcfg.method, len(data.classes))
        if note:
            log.info(f"{folder_name}: degenerate for two classes: {note}")
        extra = {"method": dcfg.method, **method_record(method)}
    meta = _meta(arch, data, role, {**extra, **dataclasses.asdict(cfg.train)}, config.seed)
    _fit(model, method, data, folder_name, checkpoint_dir, meta, out, teacher_outputs, cfg.train, config, resume)
    return _calibrated(checkpoint_dir, data, config)


def _calibrated(checkpoint_dir: Path, data: DatasetBundle, config: Config):
    """Load a trained checkpoint and store its validation-fitted temperature and threshold in its
    model.json. Deterministic, so a resumed run writes the same values again."""
    model, meta = load_checkpoint(checkpoint_dir)
    fitted = fit_calibration(model, meta, data, config)
    if not distributed.current().is_main:  # only rank 0 writes; the other ranks keep it in memory
        return model, {**meta, **fitted}
    return model, update_meta(checkpoint_dir, fitted)


def fit_calibration(model, meta: dict, data: DatasetBundle, config: Config) -> dict:
    """Temperature and threshold fitted on the VALIDATION split (never the test split)."""
    logits = predict_logits(model, data.val, channels=meta["channels"], mean=meta["mean"], std=meta["std"])
    fitted = calibrate(logits, data.val.labels.numpy(), data.positive_index,
                       rule=config.calibration.threshold_rule, temperature=config.calibration.temperature)
    threshold = "none (arg-max)" if fitted["threshold"] is None else f"{fitted['threshold']:.4f}"
    log.info(f"{meta.get('role', 'model')}: temperature {fitted['temperature']:.3f}, threshold {threshold}"
             f" ({fitted['threshold_rule']}), fitted on {len(data.val)} validation images")
    return fitted


def freeze_all_but_head(model: torch.nn.Module) -> None:
    """``head`` fine-tuning: only the classifier head trains; the backbone (and, through
    ``set_train_mode``, its BatchNorm statistics) stays as loaded."""
    model.requires_grad_(False)
    find_head(model)[1].requires_grad_(True)


def _head_on_features(method, model, data: DatasetBundle, config: Config) -> HeadOnStoredFeatures:
    """``head`` mode: the frozen backbone runs once per (image, view); training runs the head only."""
    mean, std = data.normalization
    started = time.perf_counter()
    wrapped = HeadOnStoredFeatures(method, model, data.train, channels=data.channels, mean=mean,
                                   std=std, cache_dir=resolve_cache_dir(config.data.cache_dir))
    log.info(f"teacher backbone features for {len(data.train)} images x 2 views ready in "
             f"{time.perf_counter() - started:.1f}s")
    return wrapped


def student_channels(config: Config) -> int:
    """The student's input channels: ``student.channels``, else ``data.channels``."""
    return config.student.channels or config.data.channels


def student_data(config: Config, data: DatasetBundle, role: str = "distilled") -> DatasetBundle:
    """The data as the student reads it: same splits, batches built for the student's channels
    (and their normalization). The stored images serve both: one grayscale channel is expanded,
    colour images are averaged, at batch time. Its training views: see ``student_views``."""
    channels = student_channels(config)
    data = data if channels == data.channels else dataclasses.replace(data, channels=channels)
    return student_views(config, data, role)


def student_views(config: Config, data: DatasetBundle, role: str) -> DatasetBundle:
    """The students' training images and views. The distilled student also trains on the
    unlabelled images; the baseline never does. Under a view bank both draw from the same bank;
    with a live teacher both see fresh views of ``data.augment`` every step; with the teacher's
    flip table both see flips only (the table holds no other view)."""
    bank = view_bank(config, data)
    bank_images = None if bank is None else materialized_bank(config, data, bank)
    data = with_unlabeled(data) if role == "distilled" else dataclasses.replace(data, unlabeled=None)
    if bank is not None:
        rows = len(data.train)  # the baseline's rows lead the distilled student's
        return dataclasses.replace(data, bank=bank[:rows],
                                   bank_images=None if bank_images is None else bank_images[:rows])
    if config.distill.teacher_cache:
        return dataclasses.replace(data, augment=None)
    return data


def view_bank(config: Config, data: DatasetBundle) -> torch.Tensor | None:
    """``distill.bank_views`` views per image (``[N, K, VIEW_WIDTH]``) drawn from
    ``distill.bank_seed``: the train split's rows first, then the unlabelled images', so the
    baseline's rows are the distilled student's first rows. Mixing partners are labelled images."""
    count = config.distill.bank_views
    if not count:
        return None
    if not config.distill.teacher_cache:
        raise ConfigError("distill.bank_views: a view bank replays stored teacher outputs; with "
                          "distill.teacher_cache=false the live teacher sees fresh views instead (set one)")
    generator = torch.Generator().manual_seed(config.distill.bank_seed)
    spec = data.augment or AugmentSpec(hflip=data.hflip)
    labelled = len(data.train)
    parts = [draw_views(labelled * count, generator, spec, partner_count=labelled)]
    if data.unlabeled is not None:
        parts.append(draw_views(len(data.unlabeled) * count, generator, spec, partner_count=labelled))
    return torch.cat(parts).view(-1, count, VIEW_WIDTH)


# The last materialized bank, with its key: every student and the teacher table read one copy.
_MATERIALIZED: dict = {}


def materialized_bank(config: Config, data: DatasetBundle, bank: torch.Tensor) -> torch.Tensor | None:
    """The view bank rendered once as uint8 images ``[N, K, S, H, W]`` over the train then the
    unlabelled images, or None (each batch renders its views) when it would take more than
    ``distill.bank_memory_mb``."""
    train = with_unlabeled(data).train
    needed_mb = materialized_bytes(train.images, bank.shape[1]) / 1e6
    if needed_mb > config.distill.bank_memory_mb:
        log.info(f"view bank: materialized it would take {needed_mb:.0f} MB > distill.bank_memory_mb="
                 f"{config.distill.bank_memory_mb}; rendering each batch's views instead")
        return None
    key = (tensor_sha256(bank), tensor_sha256(train.images))
    if _MATERIALIZED.get("key") != key:
        _MATERIALIZED.clear()  # one bank at a time: drop the old one before building the new
        started = time.perf_counter()
        images = materialize_views(train.images, bank, train.images)
        log.info(f"view bank: {bank.shape[1]} views of {len(train)} images rendered to uint8 "
                 f"({needed_mb:.0f} MB) in {time.perf_counter() - started:.1f}s")
        _MATERIALIZED.update(key=key, images=images)
    return _MATERIALIZED["images"]


def check_unlabeled_method(config: Config, data: DatasetBundle) -> None:
    """Images without labels train only through a distillation term on every row: ``kd`` (its
    cross-entropy covers the labelled rows). Other methods need every label."""
    if data.unlabeled is None and not bool((data.train.labels < 0).any()):
        return
    if config.distill.method != "kd":
        raise ConfigError(f"distill.method: {config.distill.method} needs a label on every image; "
                          f"data.unlabeled / data.labeled_fraction work with method kd")


def method_arguments(config: Config) -> dict:
    """The distilled method's constructor arguments: ``distill.alpha`` / ``distill.temperature``
    where it shares them (kd, article), then its own ``distill.params.<method>``."""
    dcfg = config.distill
    shared = {key: getattr(dcfg, key) for key in shared_keys(dcfg.method)}
    return {**shared, **(dcfg.params.get(dcfg.method) or method_defaults(dcfg.method))}


def method_record(method) -> dict:
    """What model.json records of the method: its ``record()``, else its alpha and temperature
    (read from the method: the article recipe fixes its own)."""
    if hasattr(method, "record"):
        return method.record()
    return {"alpha": method.alpha, "temperature": method.temperature}


def prepare_teacher_outputs(teacher, data: DatasetBundle, config: Config, method: str | None = None):
    """What the distillation loss reads the teacher's logits from: a live teacher, or (the default)
    its outputs per view, computed once and cached (kdistill/distill/teacher.py). ``data`` is the
    teacher's view of the data; a live teacher fed a grayscale student's batches runs behind an
    exact channel adapter. A method that reads features gets the live teacher with hooks (a
    cache of full-resolution feature maps per view would not fit in memory)."""
    mean, std = data.normalization
    if "features" in needs_of(method or config.distill.method):
        if config.distill.teacher_cache:
            log.info(f"{method or config.distill.method}: reads teacher features, so the teacher runs live "
                     f"every step (distill.teacher_cache ignored for it)")
        return FeatureTeacher(live_teacher_input(teacher, data, student_channels(config)))
    if not config.distill.teacher_cache:
        return LiveTeacher(live_teacher_input(teacher, data, student_channels(config)))
    started = time.perf_counter()
    bank = view_bank(config, data)
    views = FLIP_VIEWS if bank is None else bank
    train = with_unlabeled(data).train  # the distilled student's images: train, then unlabelled
    outputs = CachedTeacher(teacher, train, channels=data.channels, mean=mean, std=std,
                            cache_dir=resolve_cache_dir(config.data.cache_dir),
                            dtype=config.distill.cache_dtype, views=views,
                            bank_images=None if bank is None else materialized_bank(config, data, bank))
    log.info(f"teacher outputs for {len(train)} images x {outputs.table.shape[1]} views ready in "
             f"{time.perf_counter() - started:.1f}s (computed or read from the cache)")
    return outputs


def live_teacher_input(teacher: torch.nn.Module, data: DatasetBundle, channels: int) -> torch.nn.Module:
    """The teacher as it runs on batches made for a ``channels``-channel student: itself when the
    channels agree, else wrapped in a ``ChannelAdapter`` (1-channel student, 3-channel teacher)."""
    if channels == data.channels:
        return teacher
    if channels != 1:
        raise ConfigError(f"student.channels: {channels} with a {data.channels}-channel teacher needs "
                          f"distill.teacher_cache=true (a live teacher adapts 1 channel to 3 only)")
    (mean_in, std_in), (mean_out, std_out) = normalization(channels), data.normalization
    return ChannelAdapter(teacher, mean_in=mean_in, std_in=std_in, mean_out=mean_out, std_out=std_out)


def _fit(model, method, data, role, checkpoint_dir, meta, out, teacher, train_cfg, config, resume):
    fit(model, method, data, name=role, checkpoint_dir=checkpoint_dir, checkpoint_meta=meta,
        resume_dir=out / RESUME_FOLDER / role, teacher=teacher, seed=config.seed, resume=resume,
        progress=config.progress, device=str(resolve_device(config.device)), precision=config.precision,
        **{k: v for k, v in dataclasses.asdict(train_cfg).items()
                                     if k != "class_weighting"})


def _weights(train_cfg, data: DatasetBundle):
    if train_cfg.class_weighting == "balanced":
        return class_weights(data.train.labels, len(data.classes))
    return None


def _meta(arch: dict, data: DatasetBundle, role: str, training: dict, seed: int) -> dict:
    mean, std = data.normalization
    return {"kdistill_version": __version__, "role": role, "architecture": arch,
            "classes": data.classes, "positive_class": data.positive_class,
            "input_size": data.input_size, "channels": data.channels,
            "mean": list(mean), "std": list(std),
            # Binary data: the positive class wins at probability >= threshold.
            "threshold": 0.5 if data.positive_class is not None else None,
            "seed": seed, "training": training}


def _check_same_data(meta: dict, data: DatasetBundle, where: str) -> None:
    for key, value in (("classes", data.classes), ("input_size", data.input_size), ("channels", data.channels)):
        if meta[key] != value:
            raise CheckpointError(f"teacher.checkpoint {where}: {key} {meta[key]} != this data's {value}")


def _evaluate(model, meta, data: DatasetBundle, role: str, checkpoint: Path, config: Config):
    """The model's results.json row (speed comes later, side by side) and its (temperature-scaled)
    test probabilities."""
    row, probs = evaluate_model(model, meta, data.test, name=meta["architecture"]["name"], role=role,
                                checkpoint=str(checkpoint))
    row["selected"] = meta.get("selected")
    row["training"] = meta.get("training")
    return row, probs


def _dataset_summary(data: DatasetBundle) -> dict:
    return {**{k: v for k, v in data.info.items() if k != "skipped_files"},
            "skipped_files": data.info.get("skipped_files", []), "classes": data.classes,
            "positive_class": data.positive_class, "input_size": data.input_size,
            "evaluated_on": "test"}


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


def _write_run_files(out: Path, config: Config, data: DatasetBundle) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG_FILE, dump_yaml(config))
    splits = {name: {"files": split.names, "labels": split.labels.tolist(), "groups": split.groups}
              for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}
    write_json_atomic(out / SPLITS_FILE, splits)


def _run_doctor(config: Config) -> dict | None:
    """The data doctor's findings for a folder dataset, summarized in the log."""
    if config.data.root is None:
        return None
    found = examine(Path(config.data.root), config.data.patient_regex)
    log.info(f"doctor: {len(found['unreadable'])} unreadable images, {len(found['duplicate_groups'])} "
             f"byte-identical duplicate groups ({len(found['duplicate_groups_across_splits'])} across "
             f"splits), {len(found['leaking_groups'])} patients in more than one supplied split")
    return found


def _export_student(checkpoint: Path, data: DatasetBundle) -> dict | None:
    """ONNX + static int8 copies of the distilled student. Int8 ranges are calibrated on training
    images; parity with PyTorch and the int8 accuracy change are measured on the validation split,
    where a user decides whether the int8 copy is good enough (the test split stays for the table)."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        log.info("export: skipped (pip install 'kdistill[export]' for ONNX and int8 copies)")
        return None
    from kdistill.deploy.export import export_checkpoint

    result = export_checkpoint(checkpoint, "onnx", int8=True,
                               calibration=(data.train, "training split"),
                               check_images=(data.val, "validation split"))
    log.info(f"export: distilled student written as ONNX and int8 ONNX in {checkpoint}")
    return result


def _tuned(config: Config) -> dict | None:
    """The tuned file (``--tuned``) and the values in effect for its keys (an override may win)."""
    if config.tuned is None:
        return None
    # The values are in the config already (the file was read when it was loaded): not re-read
    # here, where a moved file would lose a finished run.
    values = {key: functools.reduce(getattr, key.split("."), config) for key in TUNED_KEYS}
    method = config.distill.method
    own = config.distill.params.get(method) or {}
    values.update({f"distill.params.{method}.{name}": own[name] for name in search_space(method) if name in own})
    return {"file": config.tuned, "values": values}


def _tuned_note(tuned: dict | None) -> str:
    if tuned is None:
        return ""
    values = ", ".join(f"{key} {value:.4g}" for key, value in tuned["values"].items())
    return f"- Tuned on the validation split (kdistill tune, {tuned['file']}): {values}.\n"


def check_out_folder(out: Path) -> None:
    """The output folder must be a folder (or not exist yet) below folders, not files."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"{path}: the output folder (out / --out) would be inside a file")
            return


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


def check_models_build(config: Config, data: DatasetBundle, roles: tuple[str, ...]) -> None:
    """Each role's model name and model_args build for this data (random weights: nothing is
    downloaded), a teacher checkpoint matches the data, and local teacher weights exist."""
    for role in roles:
        cfg = getattr(config, role)
        if role == "teacher" and cfg.checkpoint:
            _check_same_data(read_meta(Path(cfg.checkpoint)), data, cfg.checkpoint)
            continue
        if role == "teacher" and cfg.weights and not Path(cfg.weights).is_file():
            raise ConfigError(f"teacher.weights: {cfg.weights} not found")
        if role == "teacher" and cfg.pretrained and not cfg.weights and cfg.model in PACKAGED:
            packaged_weights_file(cfg.model)  # a missing package is named before anything is written
        channels = data.channels if role == "teacher" else student_channels(config)
        try:
            model = build_model(cfg.model, len(data.classes), input_size=data.input_size,
                                in_channels=channels, **cfg.model_args)
        except TypeError as exc:  # an argument the model does not take
            raise ConfigError(f"{role}.model_args: {cfg.model_args} ({exc})") from None
        except ConfigError as exc:  # an unknown name: say which key holds it
            raise ConfigError(f"{role}.model: {exc}" if str(exc).startswith("model ") else str(exc)) from None
        if role == "teacher" and cfg.mode == "partial":  # stages exist, prefixes name modules
            partial_trainable(model, cfg.trainable_blocks, cfg.trainable_prefixes)
        if role == "student":  # refused before anything trains
            enforce_budget(model, cfg.model, **dataclasses.asdict(cfg.budget), input_size=data.input_size,
                           channels=channels, num_classes=len(data.classes))


def remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _log_data(data: DatasetBundle) -> None:
    for name, split in _splits(data):
        log.info(f"data {name}: {len(split)} images ({_class_counts(data, split)}); "
                 f"{data.info['sources'].get(name, '')}")
    skipped = data.info.get("skipped_files", [])
    if skipped:
        log.info(f"data: {len(skipped)} unreadable files skipped (listed in results.json)")
    if data.unlabeled is not None:
        log.info(f"data unlabeled: {len(data.unlabeled)} images (distilled student only); "
                 f"{data.info['sources'].get('unlabeled', '')}")


def _splits(data: DatasetBundle) -> tuple:
    return ("train", data.train), ("val", data.val), ("test", data.test)


def _class_counts(data: DatasetBundle, split) -> str:
    return " / ".join(f"{c} {n}" for c, n in zip(data.classes, split.class_counts(len(data.classes))))


def _require_every_class(data: DatasetBundle) -> None:
    """A split left without one of the classes (its files unreadable, or all from patients carved
    into another split) is an error: training without a class, or a test set that cannot measure
    it, would give numbers that mean nothing."""
    for name, split in _splits(data):
        counts = split.class_counts(len(data.classes))
        if 0 in counts:
            raise DataError(f"{name} split: no {data.classes[counts.index(0)]!r} images "
                            f"({_class_counts(data, split)}; {data.info['sources'].get(name, '')}); "
                            f"unreadable files and patient grouping can empty a class: check the "
                            f"folder with kdistill doctor")


def seed_everything(seed: int, deterministic: bool, threads: int | None = None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)




def clear_earlier_model(out: Path, role: str, config: Config) -> None:
    """``kdistill train`` without ``resume``: remove this role's earlier checkpoint and resume
    state, and the results.json and reports that described it, before training it again. The
    other roles' checkpoints stay: training one model at a time builds a run folder step by step
    (``--role distilled`` reads the teacher trained there before), so they are inputs, not leftovers."""
    clear_earlier_run(out, config, (*SUMMARY_FILES, role))
    remove_resume_state(out / RESUME_FOLDER / role)


def train_one(config: Config, role: str, teacher_dir: str | None = None, resume: bool = False) -> Path:
    """``kdistill train``: train one model of the pipeline and write its checkpoint."""
    if config.seeds is not None and role != "teacher":  # silently training one seed would mislead
        raise ConfigError(f"seeds: {config.seeds} is for `kdistill run`; `kdistill train` trains one "
                          f"model: set seed=K (and seeds=null) for each")
    out = Path(config.out)
    check_out_folder(out)
    if resume:
        check_resume_config(out, config)
    as_given = config  # saved as given: the teacher folder filled in below is not a user setting
    seed_everything(config.seed, config.deterministic, config.threads)
    with distributed.main_first(distributed.current()):  # torchrun: decode once, into the cache
        data = load_dataset(**dataclasses.asdict(config.data))
    _log_data(data)
    _require_every_class(data)
    if role == "distilled":
        teacher_path = Path(teacher_dir or config.teacher.checkpoint or out / "teacher")
        if not (teacher_path / "model.json").is_file():
            raise CheckpointError(f"{teacher_path}: no teacher checkpoint; train one with --role "
                                  f"teacher or pass --teacher DIR")
        config = dataclasses.replace(config, teacher=dataclasses.replace(config.teacher,
                                                                          checkpoint=str(teacher_path)))
    check_models_build(config, data, {"teacher": ("teacher",), "baseline": ("student",)}.get(
        role, ("teacher", "student")))
    if distributed.current().is_main:
        if not resume:
            clear_earlier_model(out, role, config)
        _write_run_files(out, as_given, data)
    if role == "teacher":
        train_teacher(config, data, out, resume)
    else:
        teacher = train_teacher(config, data, out, resume=True)[0] if role == "distilled" else None
        train_student(config, data, out, role, teacher, resume)
    log.info(f"{role}: checkpoint written to {out / role}")
    return out / role
