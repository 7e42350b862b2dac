"""Seconds per teacher training epoch in each fine-tuning mode (head, partial, full), timed side by
side in one process: each round runs one epoch of every mode, in rotating order; the median of the
rounds is printed. Validation is left out (it is the same forward pass in every mode).

    python benchmarks/teacher_modes.py --root data/chest_xray --size 128 --per-class 64 --blocks 2

head trains the classifier on stored backbone features (computed once per image and view: the
one-off cost is printed apart); partial trains the last ``--blocks`` stages and what follows them;
full trains everything.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from kdistill.data import iterate_batches, load_dataset
from kdistill.distill import HeadOnStoredFeatures, build_method
from kdistill.engine.loop import set_train_mode
from kdistill.models import build_model, find_head
from kdistill.models.stages import freeze_all_but, partial_trainable
from kdistill.config import DataConfig


def prepared(mode: str, base: torch.nn.Module, blocks: int) -> torch.nn.Module:
    """A copy of ``base`` with the parameters of ``mode`` trainable."""
    model = copy.deepcopy(base)
    if mode == "head":
        model.requires_grad_(False)
        find_head(model)[1].requires_grad_(True)
    elif mode == "partial":
        freeze_all_but(model, partial_trainable(model, blocks))
    return model


def one_epoch(model, method, data, batch_size: int) -> float:
    """Seconds of one training epoch (forward, backward, AdamW step per batch)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    set_train_mode(model)
    mean, std = data.normalization
    started = time.perf_counter()
    for batch in iterate_batches(data.train, batch_size, channels=data.channels, mean=mean, std=std,
                                 shuffle=True, augment=True, generator=torch.Generator().manual_seed(0),
                                 channels_last=True):
        loss = method(batch, model)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a dataset root with train/")
    parser.add_argument("--model", default="timm:tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=64, help="training images per class")
    parser.add_argument("--blocks", type=int, default=2, help="partial: stages trained")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(DataConfig(root=args.root, input_size=args.size, max_images_per_class=args.per_class,
                                   cache_dir=None))
    base = build_model(args.model, len(data.classes), input_size=args.size, pretrained=True)
    ce = build_method("ce")
    models = {mode: prepared(mode, base, args.blocks) for mode in ("head", "partial", "full")}
    mean, std = data.normalization
    started = time.perf_counter()
    head_method = HeadOnStoredFeatures(ce, models["head"], data.train, channels=data.channels, mean=mean,
                                       std=std, batch_size=args.batch_size)
    features_s = time.perf_counter() - started
    methods = {"head": head_method, "partial": ce, "full": ce}
    times: dict[str, list[float]] = {mode: [] for mode in models}
    for round_index in range(args.rounds):
        order = list(models)[round_index % 3:] + list(models)[:round_index % 3]
        for mode in order:
            times[mode].append(one_epoch(models[mode], methods[mode], data, args.batch_size))
    trained = {mode: sum(p.numel() for p in m.parameters() if p.requires_grad) for mode, m in models.items()}
    print(f"{args.model}, {len(data.train)} training images at {args.size} px, batch {args.batch_size}, "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds (validation not included)")
    print(f"head: backbone features for {len(data.train)} images x 2 views computed once in {features_s:.1f} s")
    for mode, seconds in times.items():
        spread = max(seconds) - min(seconds)
        print(f"{mode:8s} {statistics.median(seconds):7.2f} s/epoch (spread {spread:.2f})  "
              f"{trained[mode]:,} trainable parameters")


if __name__ == "__main__":
    main()
