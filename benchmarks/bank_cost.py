"""What a view bank costs: building it, storing it, and the student's epoch drawing from it.

    python benchmarks/bank_cost.py [--data FOLDER] [--images 256] [--views 1 8 32] [--sizes 128 224] [--json]

For every K in ``--views`` and input size in ``--sizes``, over N images of ``FOLDER/train`` (a
fixed random subset, seed 0; no other folder is read) or, without ``--data``, N generated grey
images, each piece timed through the functions a ``kdistill run`` with ``distill.bank_views=K``
calls (kdistill/distill/inputs.py), with the settings of ``--config`` (default the packaged chest
X-ray config: its channels, student, method) and the views of ``--set`` (default the radiologist
views: random-resized crop at scale 0.6-1, rotation 7 degrees, brightness and contrast 0.25):

1. Building the bank: ``draw_s`` (``view_bank``: K*N view rows), ``render_s``
   (``materialized_bank``: every view rendered once to uint8), ``teacher_pass_s``
   (``prepare_teacher_outputs``: the teacher over every view, its table written to a temporary
   cache folder; ``teacher_forward_in_pass_s`` is the time inside the teacher's own forward during
   it). ``build_s`` is their sum. Beside it, in the same process: ``bare_forward_s``, the teacher's
   forward passes alone over the same K*N views (batches made beforehand, outside the timer; one
   untimed batch before both warms the teacher up), and
   ``write_s``, writing the table (``stored_view_table``, the cache's own writer). The target:
   ``build_over_forward_write`` = build_s / (bare_forward_s + write_s) close to 1. The teacher has
   random weights (``pretrained=false``): speed does not depend on them.
2. Storage per view: the rendered uint8 view (memory only: the materialized bank is never written),
   the view row, and the teacher's outputs as float32 and float16 (``distill.cache_dtype``), in
   memory and in the table file on disk (which also holds every view row, and a header); then each
   for the full split of ``--full-images`` images, with whether that bank fits
   ``distill.bank_memory_mb`` (``full_bank_materialized``; above it a run renders each batch's views).
3. The student's epoch (``fit``, the config's student and channels, ``--epochs`` epochs, ``--rounds``
   alternations after one untimed warm-up epoch each, median), seconds per image: alone
   (cross-entropy, no bank: flips only), distilled drawing one view per image from the materialized
   bank with the teacher's stored output for it (``student_bank_vs_alone``; flat across K means the
   bank's size does not slow the student's step), and distilled on the same bank rendered batch by
   batch, as a run does above ``distill.bank_memory_mb`` (``student_rendered_vs_alone``). Every
   epoch includes the same validation pass over 32 images.

``--json`` prints one JSON object instead of the tables; ``--out FILE`` also writes it to FILE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from kdistill.config import Config, TrainConfig, load_config
from kdistill.data import DatasetBundle, ImageSplit, iterate_batches
from kdistill.data.cache import cached_decode
from kdistill.data.folder import sample_train_files
from kdistill.data.views import VIEW_WIDTH, augment_spec, materialized_bytes
from kdistill.distill import build_method
from kdistill.distill.method_runs import method_arguments
from kdistill.distill.inputs import materialized_bank, prepare_teacher_outputs, student_data, view_bank
from kdistill.distill.teacher import DTYPES, stored_view_table
from kdistill.engine.loop import fit
from kdistill.log import log
from kdistill.models import build_model
from kdistill.models.checkpoint import architecture
from kdistill.models.fast_path import set_fast_path

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT / "kdistill" / "configs" / "chest_xray.yaml"
FULL_TRAIN_IMAGES = 3832  # the chest X-ray training split of a run (train/ less its validation part)
MB = 1e6


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    was_disabled, log.disabled = log.disabled, True  # fit's epoch lines would interleave with the figures
    try:
        with tempfile.TemporaryDirectory(prefix="bank_cost_") as scratch:
            rows = [measure(size, views, args, Path(scratch))
                    for size in args.sizes for views in args.views]
    finally:
        log.disabled = was_disabled
    config = bench_config(args, args.sizes[0], args.views[0])
    figures = {"data": args.data or "generated", "images": args.images, "full_images": args.full_images,
               "teacher": args.teacher, "student": config.student.model,
               "student_channels": config.student.channels or config.data.channels,
               "augment": dataclasses.asdict(config.data.augment), "threads": torch.get_num_threads(),
               "epochs": args.epochs, "rounds": args.rounds, "rows": rows}
    print(json.dumps(figures) if args.json else report(figures))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="a folder with train/<class>/ images (only train/ is read); default: generated images")
    parser.add_argument("--images", type=int, default=256, help="N images (default 256)")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 8, 32], help="bank sizes K (default 1 8 32)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="input sizes (default 128 224)")
    parser.add_argument("--teacher", default="timm:tf_efficientnet_lite0", help="teacher model (random weights)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the run's settings (default chest_xray.yaml)")
    parser.add_argument("--set", nargs="*", default=list(RADIOLOGIST_VIEWS), metavar="KEY=VALUE",
                        help="config overrides, e.g. the views (default: the radiologist views)")
    parser.add_argument("--epochs", type=int, default=2, help="student epochs per measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating alone/bank measurements (default 2)")
    parser.add_argument("--full-images", type=int, default=FULL_TRAIN_IMAGES,
                        help=f"training images the figures are extrapolated to (default {FULL_TRAIN_IMAGES})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    if args.images < 2 or min(args.views) < 1 or min(args.sizes) < 16 or args.epochs < 1 or args.rounds < 1:
        parser.error("--images >= 2, --views >= 1, --sizes >= 16, --epochs >= 1, --rounds >= 1")
    if not Path(args.config).is_file():
        sys.exit(f"{args.config}: config file not found")
    if args.data is not None and not (Path(args.data) / "train").is_dir():
        sys.exit(f"{args.data}: no train/ folder (expected {args.data}/train/<class>/<images>)")
    return args


# The bank exists for views beyond the flip; the packaged configs train on flips only.
RADIOLOGIST_VIEWS = ("data.augment.scale=[0.6,1.0]", "data.augment.rotation=7",
                     "data.augment.brightness=0.25", "data.augment.contrast=0.25")


def bench_config(args, size: int, views: int) -> Config:
    """The run's config with this bank, size and teacher (random weights); the teacher's table is
    cached only in the temporary folders this script passes in."""
    return load_config(args.config, [*args.set, f"data.input_size={size}", f"distill.bank_views={views}",
                                      "distill.teacher_cache=true", f"teacher.model={args.teacher}",
                                      "teacher.pretrained=false", "teacher.weights=null"])


# --- the data ---------------------------------------------------------------------------------

def load_images(args, config: Config, scratch: Path) -> DatasetBundle:
    """N images at the config's size: a fixed subset of ``--data``'s train/ (decoded through the
    decoded-image cache, in ``scratch``), or generated grey images."""
    size, channels = config.data.input_size, config.data.channels
    if args.data:
        classes, paths, labels = sample_train_files(Path(args.data), args.images)
        images, kept, bad, key = cached_decode(paths, size, channels, "skip", scratch / "decoded")
        if bad:
            sys.exit(f"{bad[0][0]}: {bad[0][1]}")
        names = [str(paths[i]) for i in kept]
        train = ImageSplit(images, torch.tensor([labels[i] for i in kept]), names, names, key)
    else:
        classes = ["NORMAL", "PNEUMONIA"]
        pixels = np.random.default_rng(0).integers(0, 256, (args.images, 1, size, size), dtype=np.uint8)
        names = [f"generated-{i}" for i in range(args.images)]
        # The key names the generated content, so the teacher's table is written as for cached images.
        train = ImageSplit(torch.from_numpy(pixels), torch.arange(args.images) % 2, names, names,
                           f"generated-seed0-{args.images}-{size}")
    # fit validates every epoch: 32 images drawn at random (both classes) keep it small.
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:32].sort().values
    val = ImageSplit(train.images[pick], train.labels[pick], [train.names[i] for i in pick],
                     [train.names[i] for i in pick])
    data_cfg = dataclasses.asdict(config.data)
    return DatasetBundle(classes, classes[-1], train, val, val, size, channels, {}, config.data.hflip,
                         augment_spec(data_cfg["augment"], config.data.hflip))


# --- one (size, K) --------------------------------------------------------------------------------

def measure(size: int, views: int, args, scratch: Path) -> dict:
    """Every figure of one input size and bank size K."""
    config = bench_config(args, size, views)
    data = load_images(args, config, scratch)
    torch.manual_seed(config.seed)
    arch = architecture(config.teacher.model, len(data.classes), size, data.channels, config.teacher.model_args)
    teacher = build_model(**{"name": config.teacher.model, **arch["args"]}, pretrained=False).eval()
    warm_up(teacher, data)
    row = {"size": size, "views": views, "images": len(data.train)}
    with tempfile.TemporaryDirectory(dir=scratch) as cache_dir:
        outputs = build_bank(config, data, teacher, Path(cache_dir), row)
    bank = view_bank(config, data)
    row["bare_forward_s"] = bare_forward_seconds(teacher, data, bank, materialized_bank(config, data, bank))
    row.update(storage(config, data, outputs.table, scratch))
    row["write_s"] = row.pop(f"write_s_{config.distill.cache_dtype}")
    row.update(per_view_figures(row, args.full_images))
    row.update(student_epochs(config, data, outputs, args))
    return row


def build_bank(config: Config, data: DatasetBundle, teacher: torch.nn.Module, cache_dir: Path, row: dict):
    """Draw, render, run the teacher and write its table, as a run does; fills ``row`` with the seconds."""
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_dir=str(cache_dir)))
    started = time.perf_counter()
    bank = view_bank(config, data)
    drawn = time.perf_counter()
    if materialized_bank(config, data, bank) is None:
        sys.exit(f"distill.bank_memory_mb={config.distill.bank_memory_mb}: the bank of {row['views']} views of "
                 f"{row['images']} images does not fit; lower --images or --views")
    rendered = time.perf_counter()
    with forward_timer(teacher) as inside:
        outputs = prepare_teacher_outputs(teacher, data, config)  # reuses the rendered bank, as a run does
    done = time.perf_counter()
    row.update(draw_s=drawn - started, render_s=rendered - drawn, teacher_pass_s=done - rendered,
               teacher_forward_in_pass_s=inside[0], build_s=done - started)
    return outputs


def warm_up(teacher: torch.nn.Module, data: DatasetBundle) -> None:
    """One untimed forward of a full batch: the first call's one-off setup (kernel choice, memory)
    is paid once per run, not per view, so neither timed pass carries it."""
    images = torch.zeros(64, data.channels, data.input_size, data.input_size)
    with torch.no_grad():
        teacher(images.contiguous(memory_format=torch.channels_last))


@contextmanager
def forward_timer(model: torch.nn.Module):
    """Seconds spent inside ``model``'s forward while the block runs, in a one-element list."""
    total, started = [0.0], [0.0]

    def before(module, inputs):
        started[0] = time.perf_counter()

    def after(module, inputs, output):
        total[0] += time.perf_counter() - started[0]

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield total
    finally:
        for hook in hooks:
            hook.remove()


def bare_forward_seconds(teacher: torch.nn.Module, data: DatasetBundle, bank: torch.Tensor,
                         bank_images: torch.Tensor) -> float:
    """The teacher's forward passes alone over every view of the bank: each batch (the one the
    table is built from, 64 views) is made before its timer starts."""
    mean, std = data.normalization
    total = 0.0
    for column in range(bank.shape[1]):
        view_ids = torch.full((len(data.train),), column, dtype=torch.long)
        for batch in iterate_batches(data.train, 64, channels=data.channels, mean=mean, std=std,
                                     channels_last=True, views=bank[:, column], view_ids=view_ids,
                                     bank_images=bank_images):
            started = time.perf_counter()
            with torch.no_grad():
                teacher(batch.images)
            total += time.perf_counter() - started
    return total


def storage(config: Config, data: DatasetBundle, table: torch.Tensor, scratch: Path) -> dict:
    """Bytes per view in memory and on disk, and the seconds to write the table, per stored dtype."""
    views = table.shape[0] * table.shape[1]
    figures = {"view_bytes": materialized_bytes(data.train.images, 1) // len(data.train),
               "view_row_bytes": VIEW_WIDTH * 4, "classes": table.shape[2]}
    bank = view_bank(config, data)
    mean, std = data.normalization
    for dtype in DTYPES:
        with tempfile.TemporaryDirectory(dir=scratch) as folder:
            started = time.perf_counter()
            stored = stored_view_table(lambda: table.float(), data.train, {"what": "logits", "weights": "bench"},
                                       channels=data.channels, mean=mean, std=std, cache_dir=Path(folder),
                                       dtype=dtype, views=bank)
            figures[f"write_s_{dtype}"] = time.perf_counter() - started
            files = list(Path(folder).rglob("*.safetensors"))
            if len(files) != 1:
                sys.exit(f"{folder}: expected one written teacher table, found {len(files)}")
            figures[f"table_bytes_per_view_{dtype}"] = stored.numel() * stored.element_size() / views
            figures[f"table_file_bytes_per_view_{dtype}"] = files[0].stat().st_size / views
    return figures


def per_view_figures(row: dict, full_images: int) -> dict:
    """Milliseconds per view, the build against its target, and the full split's seconds and MB."""
    views = row["images"] * row["views"]
    full_views = full_images * row["views"]
    figures = {f"{key[:-2]}_ms_per_view": 1000 * row[key] / views
               for key in ("draw_s", "render_s", "teacher_pass_s", "teacher_forward_in_pass_s", "build_s",
                           "bare_forward_s", "write_s")}
    figures["build_over_forward_write"] = row["build_s"] / (row["bare_forward_s"] + row["write_s"])
    figures["full_build_s"] = row["build_s"] / views * full_views
    figures["full_bare_forward_s"] = row["bare_forward_s"] / views * full_views
    figures["full_views_mb"] = row["view_bytes"] * full_views / MB
    for dtype in DTYPES:
        figures[f"full_table_mb_{dtype}"] = row[f"table_bytes_per_view_{dtype}"] * full_views / MB
        figures[f"full_table_file_mb_{dtype}"] = row[f"table_file_bytes_per_view_{dtype}"] * full_views / MB
    return figures


# --- the student's epoch ------------------------------------------------------------------------

def student_epochs(config: Config, data: DatasetBundle, outputs, args) -> dict:
    """Seconds per image of the student's epoch, alternated ``--rounds`` times (medians): alone (no
    bank: flips only), distilled on the materialized bank, and distilled on the bank rendered batch
    by batch (what a run does when the bank exceeds ``distill.bank_memory_mb``); ratios to alone."""
    alone_config = dataclasses.replace(config, distill=dataclasses.replace(config.distill, bank_views=None))
    rendered_config = dataclasses.replace(config, distill=dataclasses.replace(config.distill, bank_memory_mb=0))
    series = {"alone": (student_data(alone_config, data, "baseline"), lambda: build_method("ce"), None),
              "bank": (student_data(config, data, "distilled"), lambda: distilled_method(config), outputs),
              "rendered": (student_data(rendered_config, data, "distilled"), lambda: distilled_method(config),
                           outputs)}
    seconds: dict[str, list[float]] = {name: [] for name in series}
    for student_input, method, teacher in series.values():  # untimed: the first fit's one-off costs
        epoch_seconds(config, student_input, method(), teacher, 1)
    for _ in range(args.rounds):
        for name, (student_input, method, teacher) in series.items():
            seconds[name] += epoch_seconds(config, student_input, method(), teacher, args.epochs)
    per_image = {name: statistics.median(values) / len(data.train) for name, values in seconds.items()}
    full_mb = materialized_bytes(data.train.images[:1], config.distill.bank_views) * args.full_images / MB
    return {"student_alone_s_per_image": per_image["alone"], "student_bank_s_per_image": per_image["bank"],
            "student_rendered_s_per_image": per_image["rendered"],
            "student_bank_vs_alone": per_image["bank"] / per_image["alone"],
            "student_rendered_vs_alone": per_image["rendered"] / per_image["alone"],
            "full_bank_materialized": full_mb <= config.distill.bank_memory_mb}


def distilled_method(config: Config):
    """The config's distillation method with its settings, as a run builds it."""
    return build_method(config.distill.method, **method_arguments(config))


def epoch_seconds(config: Config, data: DatasetBundle, method, teacher, epochs: int) -> list[float]:
    """Seconds of each epoch of ``fit`` for the config's student (its own fast path)."""
    cfg = config.student
    torch.manual_seed(config.seed)
    arch = architecture(cfg.model, len(data.classes), data.input_size, data.channels, cfg.model_args)
    student = set_fast_path(build_model(**{"name": cfg.model, **arch["args"]}), cfg.fast_path)
    with tempfile.TemporaryDirectory(prefix="bank_cost_run_") as out:
        result = fit(student, method, data, name="bench", checkpoint_dir=Path(out) / "ckpt",
                     checkpoint_meta={"architecture": arch}, resume_dir=Path(out) / "resume", teacher=teacher,
                     train=TrainConfig(epochs=epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr),
                     seed=config.seed, progress=False)
    return [record["seconds"] for record in result.history]


# --- the table ------------------------------------------------------------------------------------

def report(f: dict) -> str:
    lines = [f"{f['images']} images ({f['data']}), teacher {f['teacher']} (random weights), student "
             f"{f['student']} ({f['student_channels']} ch), {f['threads']} torch threads; "
             f"'full' = {f['full_images']} images",
             "",
             "building    size    K |  draw  render  teacher (fwd in it) = build ms/view | bare fwd  write "
             "ms/view | build/(fwd+write) | full build s",
             "-" * 130]
    for r in f["rows"]:
        lines.append(f"            {r['size']:4d} {r['views']:4d} | {r['draw_ms_per_view']:5.2f} "
                     f"{r['render_ms_per_view']:7.2f} {r['teacher_pass_ms_per_view']:8.2f} "
                     f"({r['teacher_forward_in_pass_ms_per_view']:8.2f}) {r['build_ms_per_view']:8.2f}       | "
                     f"{r['bare_forward_ms_per_view']:8.2f} "
                     f"{r['write_ms_per_view']:6.3f}       | {r['build_over_forward_write']:17.2f} | "
                     f"{r['full_build_s']:12.1f}")
    lines += ["", "storage     size    K | view B  table B f32/f16 (file) | full: views MB  table MB f32/f16 "
              "(file) | full bank materialized", "-" * 130]
    for r in f["rows"]:
        lines.append(f"            {r['size']:4d} {r['views']:4d} | {r['view_bytes']:6d}  "
                     f"{r['table_bytes_per_view_float32']:.0f}/{r['table_bytes_per_view_float16']:.0f} "
                     f"({r['table_file_bytes_per_view_float32']:.1f}/{r['table_file_bytes_per_view_float16']:.1f})"
                     f"       | {r['full_views_mb']:14.1f}  {r['full_table_mb_float32']:.2f}/"
                     f"{r['full_table_mb_float16']:.2f} ({r['full_table_file_mb_float32']:.2f}/"
                     f"{r['full_table_file_mb_float16']:.2f}) | {r['full_bank_materialized']}")
    lines += ["", "student     size    K | alone ms/image  bank ms/image  bank/alone | rendered ms/image  "
              "rendered/alone", "-" * 100]
    for r in f["rows"]:
        lines.append(f"            {r['size']:4d} {r['views']:4d} | {1000 * r['student_alone_s_per_image']:14.3f} "
                     f"{1000 * r['student_bank_s_per_image']:14.3f} {r['student_bank_vs_alone']:11.2f} | "
                     f"{1000 * r['student_rendered_s_per_image']:17.3f} {r['student_rendered_vs_alone']:15.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
