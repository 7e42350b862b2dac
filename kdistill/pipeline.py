"""``run(config)``: data -> teacher -> student alone -> student distilled -> evaluate -> report.

Output folder (``config.out``)::

    config.yaml      the resolved config (every key, defaults included)
    splits.json      the files of each split, so anyone can check the patient grouping
    teacher/         checkpoint: model.safetensors + model.json (incl. training history); with
                     ``teacher.members``, the ensemble, and each member's own in member<k>/
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

Every check (config, device, models, weights, data, the output folder) runs before the first write.
The run records what it writes in ``kdistill-manifest.json``; a run without ``resume`` into a folder
holding an earlier run first removes what that run recorded (and nothing else), so old and new
outputs never stand side by side, and ``INCOMPLETE.txt`` marks the folder until results.json and
the reports are written (``kdistill.output_folder``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import platform
import time
from pathlib import Path

import torch

from kdistill import __version__
from kdistill.engine import distributed
from kdistill.eval.calibration import calibrate, describe_fit, positive_fraction
from kdistill.models.checkpoint import architecture, load_checkpoint, save_checkpoint_beside, update_meta
from kdistill.models.ensemble import MEMBER_ROLE, Ensemble, ensemble_architecture, model_label
from kdistill.config import Config, TeacherConfig, teacher_members
from kdistill.data import DatasetBundle, load_dataset
from kdistill.data.cache import resolve_cache_dir
from kdistill.distill import HeadOnStoredFeatures, build_method, freeze
from kdistill.distill.method_runs import distilled_runs, method_arguments, method_columns, method_record, with_method
from kdistill.distill.registry import BASELINE, search_space, two_class_note
from kdistill.distill.inputs import check_unlabeled_method, prepare_teacher_outputs, student_data, teacher_outputs_for
from kdistill.data.doctor import examine
from kdistill.preflight import check_before_data, check_same_data, log_data
from kdistill.run_folder import (CONFIG_FILE, REPORT_FILES, RESULTS_FILE, RESUME_FOLDER, plan_run_folder,
                                 remove_if_empty, run_targets, student_folders, train_targets, write_run_files)
from kdistill.errors import CheckpointError, ConfigError, DataError
from kdistill.eval.evaluate import evaluate_model, run_statistics
from kdistill.deploy.bench import add_speed
from kdistill.eval.pooled import pooled_tests_from_results
from kdistill.eval.inference import predict_logits
from kdistill.data.shifts import covered_by
from kdistill.data.views import augment_spec
from kdistill.eval.robustness import Battery, battery_logits, battery_tests, robustness
from kdistill.eval.site import fit_on_site
from kdistill.data.external import load_labelled_folder
from kdistill.eval.sample_size import fitted_on_validation, small_fit_warning
from kdistill.fileio import write_json_atomic, write_text_atomic
from kdistill.log import log
from kdistill.models import build_model, find_head
from kdistill.models.fast_path import set_fast_path
from kdistill.models.inference import use_runner
from kdistill.models.stages import freeze_all_but, partial_trainable
from kdistill.engine.precision import resolve_device
from kdistill.report.markdown import markdown_report
from kdistill.report.html import html_report
from kdistill.report.results_file import read_results
from kdistill.engine.loop import class_weights, fit


def run(config: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the whole pipeline; return the ``results.json`` content (also written to disk).
    ``overwrite``: replace files in ``out`` that no kdistill run recorded writing."""
    started = time.perf_counter()
    out = Path(config.out)
    # Fail now, before anything is decoded, cached or written, or the teacher has trained.
    output = plan_run_folder(config, run_targets(config), resume=resume, overwrite=overwrite)
    check_before_data(config, ("teacher", "student"))
    seed_everything(config.seed, config.deterministic, config.threads)
    with distributed.main_first(distributed.current()):  # torchrun: decode once, into the cache
        data = load_dataset(config.data)  # refuses a split missing a class
    log_data(data)
    data = with_site_sample(data, config)
    warnings = calibration_warnings(data, config)
    world = distributed.current()  # under torchrun: rank 0 checks, evaluates and writes
    findings = _run_doctor(config) if world.is_main else None
    if world.is_main:
        output.open()
        write_run_files(out, config, data)
    teachers = train_teachers(config, data, out, resume)
    teacher, teacher_meta = teachers[0]
    if not world.is_main:
        train_and_evaluate_students(config, data, out, teacher, resume)  # trains only, on these ranks
        return {}
    evaluated = [(*_evaluate(teacher, teacher_meta, data, "teacher", out / "teacher", config),
                  (teacher, teacher_meta))]
    evaluated += [_evaluate_member(index, model, meta, folder, data, config)
                  for index, ((model, meta), folder) in enumerate(zip(teachers[1:], member_folders(config, out)))]
    evaluated += train_and_evaluate_students(config, data, out, teacher, resume)
    rows = [row for row, _, _ in evaluated]
    add_speed(rows, {row["id"]: model for row, _, model in evaluated}, **dataclasses.asdict(config.profile))
    first_seed = student_folders(config, out)[0][1]
    deployment = _export_student(first_seed / distilled_runs(config)[0][1], data) if config.export else None
    statistics = run_statistics(rows, {row["id"]: probs for row, probs, _ in evaluated},
                                data.test.labels.numpy(), data.positive_index)
    external = [evaluate_external(folder, evaluated, data) for folder in data.external]
    statistics["battery_tests"] = battery_tests(rows, data.val.labels.numpy())
    results = {"kdistill_version": __version__, "dataset": _dataset_summary(data), "models": rows,
               **statistics, "external": external,
               "export": deployment, "doctor": findings, "tuned": _tuned(config), "warnings": warnings,
               "machine": {"platform": platform.platform(), "torch": torch.__version__},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / RESULTS_FILE, results)
    write_reports(out, results)
    for _, folder in student_folders(config, out):
        remove_if_empty(folder / RESUME_FOLDER)
    remove_if_empty(out / RESUME_FOLDER)
    output.close()
    log.info(f"written to {out}/ (results.json, report.md, report.html)")  # the CLI prints the table
    return results


def write_reports(out: Path, results: dict) -> None:
    """``report.md`` and the self-contained ``report.html`` (with the run's resolved config), both
    rendered before either is written."""
    markdown_file, html_file = REPORT_FILES
    config_path = out / CONFIG_FILE
    config_yaml = config_path.read_text() if config_path.is_file() else "(config.yaml not found)"
    texts = {markdown_file: markdown_report(results) + _tuned_note(results.get("tuned")),
             html_file: html_report(results, config_yaml)}
    for name, text in texts.items():
        write_text_atomic(out / name, text)


def regenerate_reports(run_dir: Path) -> None:
    """``kdistill report RUN_DIR``: rewrite both reports from the folder's ``results.json``."""
    path = run_dir / RESULTS_FILE
    results = read_results(path)
    try:
        results["pooled_tests"] = pooled_tests_from_results(results)  # a file from before them: from its predictions
        write_reports(run_dir, results)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a field of the wrong shape
        raise DataError(f"{path}: not a results file kdistill can report on ({type(exc).__name__}: "
                        f"{str(exc)[:120]})") from None
    log.info(f"written to {run_dir}/ (report.md, report.html)")


def calibration_warnings(data: DatasetBundle, config: Config) -> list[str]:
    """A warning (logged, and kept for results.json and the report) when the threshold or
    temperature every model fits on the validation split rests on too few images."""
    counts = dict(zip(data.classes, data.val.class_counts(len(data.classes))))
    fitted = fitted_on_validation(config.calibration.temperature, config.calibration.threshold_rule,
                                  data.positive_index is not None)
    warning = small_fit_warning(counts, fitted)
    if warning:
        log.info(f"warning: {warning}")
    return [warning] if warning else []


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
        students = [("baseline", "baseline", BASELINE, None)]
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


def train_teacher(config: Config, data: DatasetBundle, out: Path, resume: bool):
    """Fine-tune the teacher (or load the one given in ``teacher.checkpoint``); return it frozen.
    With ``teacher.members``, the frozen ensemble of its members (see ``train_teachers``)."""
    return train_teachers(config, data, out, resume)[0]


def train_teachers(config: Config, data: DatasetBundle, out: Path, resume: bool) -> list[tuple]:
    """``[(teacher, meta), *members]``: the teacher frozen, then (with ``teacher.members``) each
    member frozen, in order. Each member is fine-tuned (or loaded from its own ``checkpoint``) into
    ``teacher/member<k>/``, then the ensemble of all of them is written to ``teacher/``."""
    members = teacher_members(config.teacher)
    if not members:
        return [train_one_teacher(config.teacher, config, data, out / "teacher", "teacher", out, resume)]
    checkpoint_dir = out / "teacher"
    trained = [train_one_teacher(member, config, data, folder, f"teacher/member{index}", out, resume, role=MEMBER_ROLE)
               for index, (member, folder) in enumerate(zip(members, member_folders(config, out)))]
    if not (resume and (checkpoint_dir / "model.json").is_file()) and distributed.current().is_main:
        save_ensemble(checkpoint_dir, trained, data, config)
    distributed.barrier(distributed.current())
    ensemble = _calibrated(checkpoint_dir, data, config, teacher=True)
    return [ensemble, *trained]


def member_folders(config: Config, out: Path) -> list[Path]:
    """Each ensemble member's checkpoint: its own ``checkpoint``, else ``teacher/member<k>/``."""
    return [Path(member.checkpoint) if member.checkpoint else out / "teacher" / f"member{index}"
            for index, member in enumerate(teacher_members(config.teacher))]


def save_ensemble(checkpoint_dir: Path, members: list[tuple], data: DatasetBundle, config: Config) -> None:
    """The ensemble's checkpoint: every member's weights under ``members.<k>.``, their
    architectures in model.json, and where each member's own checkpoint is."""
    arch = ensemble_architecture(len(data.classes), data.input_size, data.channels,
                                 [meta["architecture"] for _, meta in members])
    training = {"ensemble": "mean of the members' class probabilities",
                "members": [f"member{index}" for index in range(len(members))]}
    meta = _meta(arch, data, "teacher", training, config.seed)
    save_checkpoint_beside(checkpoint_dir, Ensemble([model for model, _ in members]), meta)
    log.info(f"teacher: ensemble of {len(members)} members written to {checkpoint_dir}")


def train_one_teacher(cfg: TeacherConfig, config: Config, data: DatasetBundle, checkpoint_dir: Path, name: str,
                      out: Path, resume: bool, role: str = "teacher"):
    """Fine-tune one teacher of settings ``cfg`` into ``checkpoint_dir`` (or load ``cfg.checkpoint``);
    return it frozen and calibrated. ``name`` names its log lines and resume state."""
    if cfg.checkpoint:
        model, meta = load_checkpoint(cfg.checkpoint)
        check_same_data(meta, data, cfg.checkpoint)
        model = fast_frozen_teacher(model, meta, config, name)
        meta = {**meta, "role": role}
        meta = {**meta, **fit_calibration(model, meta, data, config, name)}  # in memory: not the user's folder
        return model, meta
    if resume and (checkpoint_dir / "model.json").is_file():
        log.info(f"{name}: already trained in {checkpoint_dir}, reusing it")
        return _calibrated(checkpoint_dir, data, config, teacher=True, name=name)
    torch.manual_seed(config.seed)
    arch = architecture(cfg.model, len(data.classes), data.input_size, data.channels, cfg.model_args)
    model = build_model(**{"name": cfg.model, **arch["args"]}, pretrained=cfg.pretrained, weights=cfg.weights)
    method = build_method(BASELINE, class_weights=_weights(cfg.train, data))
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
        log.info(f"{name}: partial fine-tuning, {len(trainable)} of "
                 f"{len(list(model.parameters()))} parameter tensors train (from {trainable[0]})")
    partial = {"trainable_blocks": cfg.trainable_blocks, "trainable_prefixes": cfg.trainable_prefixes}
    meta = _meta(arch, data, role, {"mode": cfg.mode, **(partial if cfg.mode == "partial" else {}),
                                    "pretrained": cfg.pretrained,
                                    "weights": cfg.weights, **dataclasses.asdict(cfg.train)}, config.seed)
    # Fresh views of data.augment every step; head mode's stored features exist for flips only.
    fit_data = dataclasses.replace(data, augment=None) if cfg.mode == "head" else data
    _fit(model, method, fit_data, name, checkpoint_dir, meta, out, None, cfg.train, config, resume)
    return _calibrated(checkpoint_dir, data, config, teacher=True, name=name)


def fast_frozen_teacher(model: torch.nn.Module, meta: dict, config: Config, name: str = "teacher") -> torch.nn.Module:
    """The teacher frozen, its inference passes (teacher table, shift battery, evaluations) in ONNX
    Runtime when ``teacher.onnx_inference`` and the export matches (kdistill/deploy/runner.py)."""
    model = freeze(model)
    if config.teacher.onnx_inference and resolve_device(config.device).type == "cpu":
        from kdistill.deploy.runner import onnx_runner  # onnxruntime is an optional extra

        runner = onnx_runner(model, channels=meta["channels"], input_size=meta["input_size"],
                             threads=torch.get_num_threads(), what=name)
        if runner is not None:
            use_runner(model, runner)
    return model


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
        method, teacher_outputs, extra = build_method(BASELINE, class_weights=weights), None, {"method": BASELINE}
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


def _calibrated(checkpoint_dir: Path, data: DatasetBundle, config: Config, teacher: bool = False,
                name: str | None = None):
    """Load a trained checkpoint and store its validation-fitted temperature and threshold in its
    model.json. Deterministic, so a resumed run writes the same values again. A teacher comes back
    frozen, ready for its inference passes."""
    model, meta = load_checkpoint(checkpoint_dir)
    if teacher:
        model = fast_frozen_teacher(model, meta, config, name or "teacher")
    fitted = fit_calibration(model, meta, data, config, name)
    if not distributed.current().is_main:  # only rank 0 writes; the other ranks keep it in memory
        return model, {**meta, **fitted}
    return model, update_meta(checkpoint_dir, fitted)


def fit_calibration(model, meta: dict, data: DatasetBundle, config: Config, name: str | None = None) -> dict:
    """Temperature and threshold fitted on the VALIDATION split (never the test split); the
    ``prior`` threshold rule reads the training labels' positive share instead, the ``battery``
    rule validation's renderings under the shift battery as well. With ``robustness.battery`` the
    model's robustness record (metrics per shift, at the fitted threshold) comes with them."""
    name = name or meta.get("role", "model")  # what the log lines call the model
    logits = predict_logits(model, data.val, channels=meta["channels"], mean=meta["mean"], std=meta["std"])
    rule = config.calibration.threshold_rule
    battery, shifted = None, None
    if config.robustness.battery:
        started = time.perf_counter()
        battery = Battery(data.val, config.robustness.seed, resolve_cache_dir(config.data.cache_dir))
        shifted = battery_logits(model, meta, battery)
        log.info(f"{name}: shift battery, {len(shifted)} renderings of {len(data.val)} "
                 f"validation images, in {time.perf_counter() - started:.1f}s")
    prior = None
    if rule == "prior" and data.positive_index is not None:
        prior = positive_fraction(data.train.labels.numpy(), data.positive_index)
    fitted = calibrate(logits, data.val.labels.numpy(), data.positive_index, rule=rule,
                       temperature=config.calibration.temperature, train_positive_fraction=prior,
                       shifted_logits=None if shifted is None else list(shifted.values()))
    source = {"prior": "the training labels' positive share", "argmax": "the arg-max",
              "battery": f"fitted on {len(data.val)} validation images and their shift battery"}.get(
        rule, f"fitted on {len(data.val)} validation images")
    decision = (f"the arg-max of {len(data.classes)} classes (no threshold)" if fitted["threshold"] is None
                else f"threshold {fitted['threshold']:.4f} ({fitted['threshold_rule']}: {source})")
    log.info(f"{name}: temperature {fitted['temperature']:.3f} (fitted on"
             f" {len(data.val)} validation images), {decision}")
    if battery is not None:
        fitted["robustness"] = robustness(logits, shifted, data.val.labels.numpy(), {**meta, **fitted}, battery,
                                          seen=covered_by(training_views(config, meta.get("role"))))
    if data.site is not None:  # the site's own images replace validation's threshold and temperature
        fitted.update(fit_on_site(model, {**meta, **fitted}, data.site, rule=config.calibration.site_rule,
                                  temperature=config.calibration.temperature))
        log.info(f"{name}: site calibration, temperature {fitted['temperature']:.3f}, "
                 f"threshold {fitted['threshold']} (fitted on {describe_fit(fitted['calibration'])})")
    return fitted


def training_views(config: Config, role: str | None):
    """The training views a model of ``role`` drew from: ``data.augment`` for the teacher, and for
    the students when they see it (a view bank, or a live teacher); else flips only (None)."""
    spec = augment_spec(dataclasses.asdict(config.data.augment), config.data.hflip)
    if role in ("teacher", MEMBER_ROLE):
        return None if config.teacher.mode == "head" else spec  # head mode trains on flips only
    return spec if config.distill.bank_views or not config.distill.teacher_cache else None


def with_site_sample(data: DatasetBundle, config: Config) -> DatasetBundle:
    """The data with ``calibration.site``'s labelled sample decoded (copies of the run's images and
    of the external test sets' images left out: a threshold must not be fitted on what is tested)."""
    if config.calibration.site is None:
        return data
    run_files = {name: split.names for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}
    run_files.update({f"external {folder.name}": folder.split.names for folder in data.external})
    site = load_labelled_folder(config.calibration.site, "site", data.classes, input_size=data.input_size,
                                channels=data.channels, on_bad_image=config.data.on_bad_image,
                                run_files=run_files, key="calibration.site")
    log.info(f"site sample: {len(site.split)} images from {site.folder} "
             f"({' / '.join(map(str, site.split.class_counts(len(data.classes))))})")
    return dataclasses.replace(data, site=site)


def evaluate_external(folder, evaluated: list, data: DatasetBundle) -> dict:
    """Every model on one external test set: rows (matching the test rows' ids), mean ± std,
    paired and pooled tests, predictions. Nothing is selected on it."""
    rows, probs = [], {}
    for test_row, _, (model, meta) in evaluated:
        row, row_probs = evaluate_model(model, meta, folder.split, name=test_row["name"], role=test_row["role"],
                                        checkpoint=test_row["checkpoint"])
        row.update({key: test_row.get(key) for key in ("id", "seed", "group", "method")})
        row.pop("history", None)
        rows.append(row)
        probs[row["id"]] = row_probs
    log.info(f"external test set {folder.name}: {len(folder.split)} images, {len(rows)} models evaluated")
    return {**folder.summary(data.classes),
            **run_statistics(rows, probs, folder.split.labels.numpy(), data.positive_index), "models": rows}


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


def _fit(model, method, data, role, checkpoint_dir, meta, out, teacher, train_cfg, config, resume):
    fit(model, method, data, name=role, checkpoint_dir=checkpoint_dir, checkpoint_meta=meta,
        resume_dir=out / RESUME_FOLDER / role, train=train_cfg, teacher=teacher, seed=config.seed,
        resume=resume, progress=config.progress, device=str(resolve_device(config.device)),
        precision=config.precision)


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


def _evaluate(model, meta, data: DatasetBundle, role: str, checkpoint: Path, config: Config):
    """The model's results.json row (speed comes later, side by side) and its (temperature-scaled)
    test probabilities."""
    row, probs = evaluate_model(model, meta, data.test, name=model_label(meta["architecture"]), role=role,
                                checkpoint=str(checkpoint))
    row["selected"] = meta.get("selected")
    row["training"] = meta.get("training")
    row["robustness"] = meta.get("robustness")
    return row, probs


def _evaluate_member(index: int, model, meta: dict, checkpoint: Path, data: DatasetBundle, config: Config):
    """An ensemble member's row: evaluated like any model, reported beside the ensemble."""
    row, probs = _evaluate(model, meta, data, MEMBER_ROLE, checkpoint, config)
    row["id"], row["seed"] = f"member{index}", None
    return row, probs, (model, meta)


def _dataset_summary(data: DatasetBundle) -> dict:
    return {**{k: v for k, v in data.info.items() if k != "skipped_files"},
            "skipped_files": data.info.get("skipped_files", []), "classes": data.classes,
            "positive_class": data.positive_class, "input_size": data.input_size,
            "evaluated_on": "test",
            "site": None if data.site is None else data.site.summary(data.classes)}


def _run_doctor(config: Config) -> dict | None:
    """The data doctor's findings for a folder dataset, summarized in the log."""
    if config.data.root is None:
        return None
    # The validation-size check is the run's own (calibration_warnings, on the split it made).
    found = examine(Path(config.data.root), config.data.patient_regex, split_settings=None)
    log.info(f"doctor: {len(found['unreadable'])} unreadable images, {len(found['duplicate_groups'])} "
             f"byte-identical duplicate groups ({len(found['duplicate_groups_across_splits'])} across "
             f"splits), {len(found['label_conflicts'])} label conflicts, {len(found['leaking_groups'])} "
             f"patients in more than one supplied split")
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
    from kdistill.tune import TUNED_KEYS, TUNED_PARAMS_PREFIX  # tune imports this module

    # The values are in the config already (the file was read when it was loaded): not re-read
    # here, where a moved file would lose a finished run.
    values = {key: functools.reduce(getattr, key.split("."), config) for key in TUNED_KEYS}
    method = config.distill.method
    own = config.distill.params.get(method) or {}
    values.update({f"{TUNED_PARAMS_PREFIX}{method}.{name}": own[name]
                   for name in search_space(method) if name in own})
    return {"file": config.tuned, "values": values}


def _tuned_note(tuned: dict | None) -> str:
    if tuned is None:
        return ""
    values = ", ".join(f"{key} {value:.4g}" for key, value in tuned["values"].items())
    return f"- Tuned on the validation split (kdistill tune, {tuned['file']}): {values}.\n"


def seed_everything(seed: int, deterministic: bool, threads: int | None = None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def train_one(config: Config, role: str, teacher_dir: str | None = None, resume: bool = False,
              overwrite: bool = False) -> Path:
    """``kdistill train``: train one model of the pipeline and write its checkpoint."""
    if config.seeds is not None and role != "teacher":  # silently training one seed would mislead
        raise ConfigError(f"seeds: {config.seeds} is for `kdistill run`; `kdistill train` trains one "
                          f"model: set seed=K (and seeds=null) for each")
    out = Path(config.out)
    as_given = config  # saved as given: the teacher folder filled in below is not a user setting
    teacher_path = Path(teacher_dir or config.teacher.checkpoint or out / "teacher")
    output = plan_run_folder(config, train_targets(role), resume=resume, overwrite=overwrite,
                             replace_all=False, also_reads=(teacher_path,) if role == "distilled" else ())
    if role == "distilled":
        if not (teacher_path / "model.json").is_file():
            raise CheckpointError(f"{teacher_path}: no teacher checkpoint; train one with --role "
                                  f"teacher or pass --teacher DIR")
        config = dataclasses.replace(config, teacher=dataclasses.replace(
            config.teacher, checkpoint=str(teacher_path), members=[]))  # a saved ensemble loads as one
    check_before_data(config, {"teacher": ("teacher",), "baseline": ("student",)}.get(role, ("teacher", "student")))
    seed_everything(config.seed, config.deterministic, config.threads)
    with distributed.main_first(distributed.current()):  # torchrun: decode once, into the cache
        data = load_dataset(config.data)  # refuses a split missing a class
    log_data(data)
    if distributed.current().is_main:
        output.open()
        write_run_files(out, as_given, data)
    if role == "teacher":
        train_teacher(config, data, out, resume)
    else:
        teacher = train_teacher(config, data, out, resume=True)[0] if role == "distilled" else None
        train_student(config, data, out, role, teacher, resume)
    if distributed.current().is_main:
        remove_if_empty(out / RESUME_FOLDER)  # the model's own state went when it finished
        output.close()
    log.info(f"{role}: checkpoint written to {out / role}")
    return out / role
