"""The ``kdistill`` command line: parses arguments, then calls the pipeline, training or
evaluation. It holds no logic of its own."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from importlib import resources
from pathlib import Path

from kdistill.errors import KdistillError

DESCRIPTION = ("Compress an image classifier by knowledge distillation: fine-tune a teacher, train a small "
               "student alone and distilled from it, evaluate all three on held-out data, and deploy the student.")
EPILOG = ("Results (tables, summaries) go to stdout, progress and log lines to stderr. "
          "'kdistill COMMAND --help' lists a command's options; docs/config.md lists every config key.")
VERBOSE_HELP = "debug logging (also accepted after the command)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdistill", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"kdistill {package_version()}",
                        help="print the installed kdistill version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    run = commands.add_parser("run", help="teacher, student alone, student distilled, evaluation, report")
    _add_config_args(run)
    run.add_argument("--tuned", metavar="FILE", help="best.yaml from kdistill tune: use the values it found "
                     "(student.train.lr and the distillation method's tuned parameters; key=value overrides win)")

    tune = commands.add_parser("tune", help="search the learning rate and the distillation method's parameters "
                               "(alpha, temperature, or the method's own) with Optuna on the validation split")
    tune.add_argument("config", help="YAML config file")
    tune.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. tune.trials=10")
    tune.add_argument("--trials", type=_positive_int, help="number of trials (default: tune.trials)")
    tune.add_argument("--out", help="output folder for trials.csv and best.yaml (default: <out>/tune)")
    _add_overwrite(tune)

    search = commands.add_parser("search-student", help="the best kdistill family student within "
                                 "student.budget, ranked on the validation split, then trained fully")
    search.add_argument("config", help="YAML config file")
    search.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. student.budget.params=100000")
    search.add_argument("--out", help="output folder for search.json/.md/.png and the best run "
                                      "(default: <out>/search)")
    _add_overwrite(search)

    report = commands.add_parser("report", help="rewrite report.md and report.html from a run's results.json")
    report.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a kdistill run")

    demo = commands.add_parser("demo", help="the whole pipeline on the built-in digits data (no download)")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_overwrite(demo)
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    train = commands.add_parser("train", help="train one model (teacher, baseline or distilled)")
    _add_config_args(train)
    train.add_argument("--role", choices=["teacher", "baseline", "distilled"], required=True,
                       help="which model: the teacher, the student alone, or the student distilled from --teacher")
    train.add_argument("--teacher", help="teacher checkpoint directory (for --role distilled)")

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on a folder of images")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint directory")
    evaluate.add_argument("--data", required=True, help="FOLDER/<class>/ images, or a root with test/")
    evaluate.add_argument("--out", help="write results.json here")
    evaluate.add_argument("--threads", type=int, default=2, help="CPU threads for the speed figures")
    evaluate.add_argument("--on-bad-image", choices=["skip", "error"], default="skip",
                          help="unreadable images: skip and list them (default), or stop")
    evaluate.add_argument("--no-speed", action="store_true",
                          help="skip the CPU latency and throughput timing (metrics and size only)")
    study = commands.add_parser("threshold-study", help="each threshold rule against the best threshold in "
                                "hindsight on a finished run's test split (judge rules on a held-out source)")
    study.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a finished kdistill run")
    study.add_argument("--json", action="store_true", help="print the study as JSON")
    calibrate = commands.add_parser("calibrate", help="refit a checkpoint's threshold and temperature on a "
                                    "labelled sample from the deployment site")
    calibrate.add_argument("--checkpoint", required=True, help="checkpoint directory (its ONNX files are updated too)")
    calibrate.add_argument("--data", required=True, help="the site's labelled images: FOLDER/<class>/ (say 50-200)")
    calibrate.add_argument("--rule", choices=["balanced_accuracy", "youden"], default="balanced_accuracy",
                           help="threshold rule fitted on the site's images (default balanced_accuracy)")
    calibrate.add_argument("--no-temperature", action="store_true", help="keep T = 1 instead of fitting it")
    calibrate.add_argument("--out", help="write a calibrated copy of the checkpoint here instead of updating it")
    doctor = commands.add_parser("doctor", help="check an image folder: counts, layout, unreadable files, "
                                                 "duplicates, label conflicts, leakage, validation size")
    doctor.add_argument("--data", required=True, help="dataset root with train/ [val/] [test/]")
    doctor.add_argument("--config", help="read data.patient_regex and the split settings from this config "
                                         "(default: their defaults)")
    doctor.add_argument("--patient-regex", default=None, help="patient key regex (default: the config's, "
                                                              "else chest X-ray names)")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.add_argument("--strict", action="store_true", help="exit 1 on anything run refuses, unreadable "
                        "images, label conflicts, leakage or a validation split too small to fit on")
    _add_deploy_commands(commands)
    for command in commands.choices.values():
        # SUPPRESS: without -v here the value given before the command (or False) stands.
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def package_version() -> str:
    """The installed distribution's version; the package's own when it runs from a source tree."""
    try:
        return importlib.metadata.version("kdistill")
    except importlib.metadata.PackageNotFoundError:
        from kdistill import __version__

        return __version__


def _add_deploy_commands(commands) -> None:
    """``export``, ``predict`` and ``bench``: deploying and timing trained models."""
    export = commands.add_parser("export", help="export a checkpoint to ONNX (optionally int8) or TorchScript")
    export.add_argument("--checkpoint", required=True, help="checkpoint directory")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx",
                        help="ONNX (default; runs in ONNX Runtime, int8 possible) or TorchScript")
    export.add_argument("--int8", action="store_true", help="also write an int8 ONNX model (needs --calibration)")
    export.add_argument("--calibration", help="folder of images to calibrate int8 on (any layout)")
    export.add_argument("--data", help="FOLDER/<class>/ images for the parity and int8 accuracy checks "
                                       "(default: the calibration images)")
    export.add_argument("--out", help="output file (default: model.onnx / model.torchscript.pt in the checkpoint)")
    export.add_argument("--threads", type=_positive_int, default=1, help="ONNX Runtime threads for the checks")

    predict = commands.add_parser("predict", help="classify images with a checkpoint or an exported ONNX file")
    predict.add_argument("--checkpoint", required=True, help="checkpoint directory or model.onnx")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursive)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--threads", type=_positive_int, default=1, help="CPU threads")

    bench = commands.add_parser("bench", help="CPU latency/throughput in PyTorch and ONNX Runtime, side by side")
    bench.add_argument("--checkpoint", nargs="+", action="extend", default=[], metavar="DIR",
                       help="checkpoint directories")
    bench.add_argument("--model", action="append", default=[], metavar="NAME",
                       help="architecture by name, random weights (repeatable)")
    bench.add_argument("--input-size", type=_positive_int, default=None,
                       help="input size for --model (default: the checkpoints', else 224)")
    bench.add_argument("--num-classes", type=int, default=2, help="classes for --model (default 2)")
    bench.add_argument("--channels", action="append", default=[], metavar="NAME=C",
                       help="input channels of --model NAME, 1 or 3 (repeatable; NAME=1,3 times both)")
    bench.add_argument("--threads", type=_thread_counts, default=None, metavar="N[,N]",
                       help="threads for both runtimes; several (1,2) are timed one after the other "
                            "(default 1; 1,2 with --int8)")
    bench.add_argument("--rounds", type=_positive_int, default=15,
                       help="timed rounds at batch 1 (a third of them at batch 64)")
    bench.add_argument("--int8", action="store_true", help="also time int8 ONNX Runtime models")
    bench.add_argument("--calibration", help="images to calibrate int8 checkpoints on (default: random inputs)")
    bench.add_argument("--json", action="store_true", help="print a JSON list of rows")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _thread_counts(text: str) -> list[int]:
    """``--threads 1,2`` -> [1, 2]."""
    try:
        return [_positive_int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1 or 1,2, got {text!r}") from None


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. student.train.epochs=5")
    parser.add_argument("--out", help="output folder (overrides the config's out)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in the output folder")
    _add_overwrite(parser)


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in the output folder that no kdistill run recorded writing "
                             "(by default such files stop the command)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting KEY=VALUE overrides come after options too (``--role teacher a.b=1``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kdistill.log import configure

    configure(args.verbose)
    try:
        return _dispatch(args)
    except KdistillError as exc:
        print(f"kdistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdistill: interrupted; continue with --resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from kdistill import config as config_module

    if args.command == "doctor":
        return _doctor(args)
    if args.command == "report":
        from kdistill.pipeline import regenerate_reports

        regenerate_reports(Path(args.run_dir))
        return 0
    if args.command == "tune":
        return _tune(args)
    if args.command == "search-student":
        return _search_student(args)
    if args.command in ("export", "predict", "bench"):
        print(_deploy(args))
        return 0
    if args.command == "threshold-study":
        import json

        from kdistill.threshold_study import format_study, study_run

        study = study_run(Path(args.run_dir))
        print(json.dumps(study, indent=2) if args.json else format_study(study))
        return 0
    if args.command == "calibrate":
        from kdistill.commands import calibrate_checkpoint

        fitted = calibrate_checkpoint(Path(args.checkpoint), Path(args.data), rule=args.rule,
                                      temperature=not args.no_temperature,
                                      out=Path(args.out) if args.out else None)
        record = fitted["calibration"]
        threshold = "arg-max" if fitted["threshold"] is None else f"{fitted['threshold']:.4g}"
        print(f"threshold {threshold}, temperature {fitted['temperature']:.4g} "
              f"({fitted['threshold_rule']}, {record['images']} site images); written to "
              f"{args.out or args.checkpoint}")
        return 0
    if args.command == "evaluate":
        from kdistill.commands import evaluate_checkpoint
        from kdistill.report.markdown import comparison_table

        out = Path(args.out) if _output_arg(args.out) else None
        speed = None if args.no_speed else {"threads": args.threads}
        results = evaluate_checkpoint(Path(args.checkpoint), Path(args.data), out, speed=speed,
                                      on_bad_image=args.on_bad_image)
        print(comparison_table(results))
        return 0
    if args.command == "demo":
        config_path = resources.files("kdistill") / "configs" / "demo.yaml"
        with resources.as_file(config_path) as path:
            config = config_module.load_config(path, [*args.overrides, f"out={args.out}"])
    else:
        overrides = list(args.overrides) + ([f"out={args.out}"] if args.out is not None else [])
        overrides += [f"tuned={args.tuned}"] if getattr(args, "tuned", None) else []
        config = config_module.load_config(args.config, overrides)
    return _train_or_run(args, config)


def _train_or_run(args: argparse.Namespace, config) -> int:
    """``train``, ``run`` and ``demo``, inside a torch.distributed session when torchrun started
    this process (one process per device; only rank 0 logs progress and writes files)."""
    from kdistill.engine import distributed
    from kdistill.log import show_progress
    from kdistill.pipeline import run, train_one
    from kdistill.report.markdown import comparison_table

    show_progress(config.progress)
    with distributed.session() as world:
        if not world.is_main:
            logging.getLogger("kdistill").setLevel(logging.WARNING)
        if args.command == "train":
            train_one(config, args.role, teacher_dir=args.teacher, resume=args.resume, overwrite=args.overwrite)
            return 0
        results = run(config, resume=args.resume, overwrite=args.overwrite)
    if world.is_main:
        print(comparison_table(results))  # the result on stdout; every log line went to stderr
    return 0


def _tune(args: argparse.Namespace) -> int:
    from kdistill.config import load_config
    from kdistill.log import show_progress
    from kdistill.tune import tune

    config = load_config(args.config, args.overrides)
    show_progress(config.progress)
    out = Path(args.out) if _output_arg(args.out) else Path(config.out) / "tune"
    best = tune(config, out, trials=args.trials, overwrite=args.overwrite)
    values = " ".join(f"{name}={value:.4g}" for name, value in best["params"].items())
    print(f"best trial {best['number']}: validation {best['metric']} {best['value']:.4f} ({values}); "
          f"{out}/trials.csv, {out}/best.yaml")
    return 0


def _search_student(args: argparse.Namespace) -> int:
    from kdistill.config import load_config
    from kdistill.log import show_progress
    from kdistill.search import search_student

    config = load_config(args.config, args.overrides)
    show_progress(config.progress)
    out = Path(args.out) if _output_arg(args.out) else Path(config.out) / "search"
    best = search_student(config, out, overwrite=args.overwrite)["best"]
    print(f"best student: {best['label']} (validation {best['score']:.4f}, {best['params']:,} params, "
          f"{best['latency_ms']:.3f} ms); {out}/search.md, full run in {out}/best")
    return 0


def _output_arg(text: str | None) -> str | None:
    """``--out`` as given (None when not given); an empty one is an error, not the current folder."""
    if text is not None and not text.strip():
        raise KdistillError("--out: empty; name an output folder or file")
    return text


def _doctor(args: argparse.Namespace) -> int:
    import json

    from kdistill.config import DataConfig, load_config
    from kdistill.data.doctor import blocking_summary, examine, format_summary, has_blocking_problems, split_settings

    data = load_config(args.config, [f"data.root={args.data}"]).data if args.config else DataConfig()
    findings = examine(Path(args.data), args.patient_regex or data.patient_regex, split_settings(data))
    print(json.dumps(findings, indent=2) if args.json else format_summary(findings))
    if args.strict and has_blocking_problems(findings):
        print(f"kdistill: doctor: {blocking_summary(findings)}", file=sys.stderr)
        return 1
    return 0


def _deploy(args: argparse.Namespace) -> str:
    """Run ``export``, ``predict`` or ``bench``; return the text to print."""
    if args.command == "export":
        from kdistill.deploy.export import export_checkpoint, format_report

        return format_report(export_checkpoint(args.checkpoint, args.format, out=_output_arg(args.out),
                                               int8=args.int8, calibration=args.calibration,
                                               check_images=args.data, threads=args.threads))
    if args.command == "predict":
        from kdistill.deploy.predict import run_predict

        return run_predict(Path(args.checkpoint), [Path(p) for p in args.paths], as_json=args.json,
                           threads=args.threads)
    from kdistill.deploy.bench import bench_command, parse_channels

    return bench_command(args.checkpoint, args.model, input_size=args.input_size, num_classes=args.num_classes,
                         threads=args.threads, int8=args.int8, calibration=args.calibration,
                         rounds=args.rounds, as_json=args.json, channels=parse_channels(args.channels))


if __name__ == "__main__":
    raise SystemExit(main())
