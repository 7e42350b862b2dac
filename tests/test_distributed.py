"""``torchrun --nproc-per-node 2`` (CPU, gloo) against one process at the same global batch.

Each of the 2 processes takes batch_size 4 from its half of every epoch's permutation; the single
process takes batch_size 8. Both see the same 8 images per step and DistributedDataParallel averages
the two gradients, so the runs agree up to float summation order (a mean over 8 against the mean of
two means over 4, and gloo's all-reduce). Tolerance: max |w_ddp - w_single| < 1e-4 for every tensor
of the teacher and both students after 2 epochs of 4 steps each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import PROJECT_ROOT, leftover_temp_files, make_image_folder, tiny_config, write_config
from kdistill.engine.distributed import World, shard

ENTRY = Path(__file__).with_name("ddp_entry.py")
TOLERANCE = 1e-4


def test_shards_are_disjoint_cover_the_order_and_interleave_like_one_big_batch():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [shard(order, World(rank, 3)) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded from 10 to 12 with the head of the order
    assert sorted(torch.cat(shards).tolist()) == sorted(order.tolist() + order[:2].tolist())
    even = torch.arange(8)
    first_steps = torch.cat([shard(even, World(rank, 2))[:2] for rank in range(2)])
    assert sorted(first_steps.tolist()) == [0, 1, 2, 3]  # step 1 of both ranks = images 0..3


def run_kdistill(command: list[str], config: Path, out: Path, batch_size: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    batch = [f"teacher.train.batch_size={batch_size}", f"student.train.batch_size={batch_size}"]
    done = subprocess.run([*command, str(ENTRY), "run", str(config), "--out", str(out), *batch],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=16, splits=("train", "val", "test"))
    config = tiny_config(root, tmp_path / "unused", data={"min_val_images": 1, "hflip": True},
                         teacher={"model": "plain_cnn", "model_args": {"width": 8}},
                         student={"model": "plain_cnn", "model_args": {}},
                         deterministic=True, threads=1, export=False)
    config_path = write_config(tmp_path / "config.yaml", config)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_kdistill([sys.executable], config_path, single, batch_size=8)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run_kdistill(torchrun, config_path, ddp, batch_size=4)

    for role in ("teacher", "baseline", "distilled"):
        a = load_file(str(single / role / "model.safetensors"))
        b = load_file(str(ddp / role / "model.safetensors"))
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < TOLERANCE, (role, worst)
        history = json.loads((ddp / role / "model.json").read_text())["history"]
        assert len(history) == 2
    results = json.loads((ddp / "results.json").read_text())  # written once, by rank 0, complete
    assert [m["role"] for m in results["models"]] == ["teacher", "baseline", "distilled"]
    assert leftover_temp_files(ddp) == []
