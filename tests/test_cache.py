"""Disk caches: decoded images (memory-mapped .npy + manifest) and teacher outputs per view
(safetensors); reuse, invalidation, torn/truncated files, parity with the live teacher, head mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdistill.data.cache as cache_module
import kdistill.distill.teacher as teacher_module
from kdistill.data import iterate_batches, load_dataset
from kdistill.data.cache import cached_decode, resolve_cache_dir
from kdistill.distill import CachedTeacher, HeadOnStoredFeatures, LiveTeacher, build_method
from kdistill.distill.teacher import FLIP_VIEWS
from kdistill.errors import DataError
from kdistill.models import build_model, find_head
from kdistill.pipeline import freeze_all_but_head
from conftest import make_image_folder
from kdistill.config import DataConfig


@pytest.fixture
def folder(tmp_path: Path) -> list[Path]:
    root = make_image_folder(tmp_path / "data", per_class=6, size=20)
    return sorted((root / "train").rglob("*.png"))


@pytest.fixture
def decode_calls(monkeypatch) -> list[int]:
    """Counts the files actually decoded (cache hits decode none)."""
    calls: list[int] = []
    real = cache_module.decode_files

    def counting(paths, *args, **kwargs):
        calls.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(cache_module, "decode_files", counting)
    return calls


def entry_files(cache_dir: Path) -> tuple[Path, Path]:
    (array,) = sorted((cache_dir / "images").glob("*.npy"))
    return array, array.with_suffix(".json")


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("KDISTILL_CACHE_DIR", str(tmp_path / "c"))
    assert resolve_cache_dir("auto") == tmp_path / "c"
    assert resolve_cache_dir(None) is None and resolve_cache_dir("off") is None
    assert resolve_cache_dir(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("KDISTILL_CACHE_DIR")
    assert resolve_cache_dir("auto") == Path.home() / ".cache" / "kdistill"


def test_cache_settings_from_the_command_line():
    from kdistill.config import load_config

    config = load_config(None, ["data.dataset=digits", "data.cache_dir=off", "distill.cache_dtype=float16"])
    assert resolve_cache_dir(config.data.cache_dir) is None and config.distill.cache_dtype == "float16"
    assert load_config(None, ["data.dataset=digits"]).data.cache_dir == "auto"


@pytest.fixture(scope="module")
def module_scoped_cache_dir() -> Path | None:
    """What a module-scoped fixture (e.g. one shared pipeline run) would cache into."""
    return resolve_cache_dir("auto")


def test_tests_never_write_to_the_home_cache(private_cache_dir, module_scoped_cache_dir):
    assert resolve_cache_dir("auto") == private_cache_dir
    home = Path.home() / ".cache" / "kdistill"
    assert module_scoped_cache_dir is not None and module_scoped_cache_dir != home


def test_decoded_cache_is_built_once_then_memory_mapped(folder, tmp_path, decode_calls):
    first, kept, bad, key = cached_decode(folder, 16, 3, "skip", tmp_path / "c")
    assert decode_calls == [len(folder)] and kept == list(range(len(folder))) and not bad
    assert first.shape == (len(folder), 1, 16, 16) and first.dtype == torch.uint8  # grayscale: 1 channel
    second, _, _, key2 = cached_decode(folder, 16, 3, "skip", tmp_path / "c")
    assert decode_calls == [len(folder)] and key2 == key  # nothing decoded again
    array_path, _ = entry_files(tmp_path / "c")
    if Path("/proc/self/maps").is_file():  # Linux: the file is mapped, not read into memory
        assert str(array_path) in Path("/proc/self/maps").read_text()
    assert torch.equal(first, second)
    uncached, _, _, none_key = cached_decode(folder, 16, 3, "skip", None)
    assert none_key is None and torch.equal(uncached, second)


def test_colour_images_keep_three_channels(tmp_path):
    paths = []
    for i in range(3):
        pixels = np.zeros((12, 12, 3), np.uint8)
        pixels[..., i] = 200  # red, green, blue: not grayscale
        paths.append(tmp_path / f"c{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    images, *_ = cached_decode(paths, 12, 3, "skip", tmp_path / "c")
    assert images.shape == (3, 3, 12, 12) and int(images[0, 0, 0, 0]) == 200 and int(images[0, 1, 0, 0]) == 0


def test_changed_file_or_input_size_rebuilds(folder, tmp_path, decode_calls):
    _, _, _, key = cached_decode(folder, 16, 3, "skip", tmp_path / "c")
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(folder[0])
    os.utime(folder[0], ns=(1, 1))  # a different mtime even on coarse-timestamp file systems
    images, _, _, key2 = cached_decode(folder, 16, 3, "skip", tmp_path / "c")
    assert key2 != key and decode_calls == [len(folder)] * 2
    assert int(images[0].min()) == 255  # the new content, not the stale one
    _, _, _, key3 = cached_decode(folder, 12, 3, "skip", tmp_path / "c")
    assert key3 not in (key, key2) and len(decode_calls) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_manifest", "bad_manifest"])
def test_torn_or_truncated_image_cache_is_rebuilt(folder, tmp_path, decode_calls, damage):
    reference, *_ = cached_decode(folder, 16, 3, "skip", tmp_path / "c")
    reference = reference.clone()
    array, manifest = entry_files(tmp_path / "c")
    data = array.read_bytes()
    if damage == "truncate":
        array.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":  # same size, same header: only the checksum can tell
        array.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "no_manifest":
        manifest.unlink()
    else:
        manifest.write_text("{not json")
    images, *_ = cached_decode(folder, 16, 3, "skip", tmp_path / "c")
    assert len(decode_calls) == 2  # rebuilt, not used
    assert torch.equal(images, reference)
    assert json.loads(manifest.read_text())["bytes"] == array.stat().st_size


def test_an_unwritable_cache_folder_does_not_stop_the_run(folder, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    images, kept, _, key = cached_decode(folder, 16, 3, "skip", not_a_folder)
    assert key is None and len(images) == len(kept) == len(folder)


def test_bad_files_are_remembered_and_error_mode_still_raises(folder, tmp_path):
    folder[1].write_bytes(b"not an image")
    images, kept, bad, _ = cached_decode(folder, 16, 3, "skip", tmp_path / "c")
    assert 1 not in kept and [p for p, _ in bad] == [folder[1]] and len(images) == len(folder) - 1
    _, kept2, bad2, _ = cached_decode(folder, 16, 3, "skip", tmp_path / "c")  # from the cache
    assert kept2 == kept and [p for p, _ in bad2] == [folder[1]]
    with pytest.raises(DataError, match=folder[1].name):
        cached_decode(folder, 16, 3, "error", tmp_path / "c")


def test_load_dataset_uses_the_cache_and_off_disables_it(tmp_path, private_cache_dir):
    root = make_image_folder(tmp_path / "d", per_class=12)
    cached = load_dataset(DataConfig(root=str(root), input_size=16, val_fraction=0.25, test_fraction=0.25))
    assert cached.train.cache_key is not None and any((private_cache_dir / "images").glob("*.npy"))
    plain = load_dataset(DataConfig(root=str(root), input_size=16, val_fraction=0.25, test_fraction=0.25,
                                    cache_dir="off"))
    assert plain.train.cache_key is None
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(cached, name).images, getattr(plain, name).images)


# --- teacher outputs --------------------------------------------------------------------------

def tiny_teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("tiny_cnn_d2", 2, input_size=16, width=4)
    model.train()
    with torch.no_grad():  # non-default BatchNorm statistics, so eval vs train mode matters
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16) * 2 + 1)
    return model


@pytest.fixture
def data(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=12)
    return load_dataset(DataConfig(root=str(root), input_size=16, val_fraction=0.25, test_fraction=0.25))


@pytest.fixture
def forward_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = teacher_module.view_table

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "view_table", counting)
    return calls


def cached_teacher(model, data, cache_dir, dtype="float32", views=FLIP_VIEWS):
    mean, std = data.normalization
    return CachedTeacher(model, data.train, channels=3, mean=mean, std=std, batch_size=5,
                         cache_dir=cache_dir, dtype=dtype, views=views)


def epoch_batches(data, seed):
    mean, std = data.normalization
    return list(iterate_batches(data.train, 4, channels=3, mean=mean, std=std, shuffle=True,
                                augment=True, generator=torch.Generator().manual_seed(seed)))


def test_replayed_logits_match_the_live_teacher_and_replay_identically(data, tmp_path, forward_calls):
    model = tiny_teacher()
    cached_teacher(model, data, tmp_path / "c")  # computes and stores
    replay = cached_teacher(model, data, tmp_path / "c")  # read back from disk
    assert forward_calls == [1]
    live = LiveTeacher(model)
    flips = set()
    for batch in epoch_batches(data, 0) + epoch_batches(data, 1):
        flips.update(batch.flipped.tolist())
        torch.testing.assert_close(replay(batch), live(batch), atol=1e-4, rtol=0)
    assert flips == {True, False}
    first = [replay(b) for b in epoch_batches(data, 5)]
    again = [replay(b) for b in epoch_batches(data, 5)]  # the same draw in another epoch/run
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_float16_table_is_close_and_stored_separately(data, tmp_path, forward_calls):
    model = tiny_teacher()
    exact = cached_teacher(model, data, tmp_path / "c")
    half = cached_teacher(model, data, tmp_path / "c", dtype="float16")
    assert half.table.dtype == torch.float16 and forward_calls == [1, 1]
    batch = epoch_batches(data, 0)[0]
    torch.testing.assert_close(half(batch), exact(batch), atol=1e-2, rtol=1e-2)
    assert half(batch).dtype == torch.float32


def test_teacher_weights_data_or_view_bank_change_recomputes(data, tmp_path, forward_calls):
    cached_teacher(tiny_teacher(0), data, tmp_path / "c")
    cached_teacher(tiny_teacher(1), data, tmp_path / "c")  # other weights
    assert forward_calls == [1, 1]
    cached_teacher(tiny_teacher(0), data, tmp_path / "c")  # the first weights again: a hit
    assert forward_calls == [1, 1]
    other_size = load_dataset(DataConfig(root=data.info["root"], input_size=12, val_fraction=0.25,
                                         test_fraction=0.25))
    cached_teacher(build_model("tiny_cnn_d2", 2, input_size=12, width=4), other_size, tmp_path / "c")
    assert forward_calls == [1, 1, 1]
    reordered = cached_teacher(tiny_teacher(0), data, tmp_path / "c", views=FLIP_VIEWS.flip(0))
    assert forward_calls == [1, 1, 1, 1]
    batch = epoch_batches(data, 0)[0]  # another bank, yet each view still replays its own logits
    torch.testing.assert_close(reordered(batch), LiveTeacher(tiny_teacher(0))(batch), atol=1e-4, rtol=0)
    assert len(list((tmp_path / "c" / "teacher").glob("*.safetensors"))) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_torn_or_truncated_teacher_cache_is_recomputed(data, tmp_path, forward_calls, damage):
    model = tiny_teacher()
    reference = cached_teacher(model, data, tmp_path / "c").table.clone()
    (path,) = (tmp_path / "c" / "teacher").glob("*.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 7] if damage == "truncate" else raw[:-1] + bytes([raw[-1] ^ 0x40]))
    again = cached_teacher(model, data, tmp_path / "c")
    assert forward_calls == [1, 1] and torch.equal(again.table, reference)
    assert len(path.read_bytes()) == len(raw)  # rewritten whole ...
    cached_teacher(model, data, tmp_path / "c")
    assert forward_calls == [1, 1]  # ... and intact: the next run reads it


def test_without_a_disk_cache_nothing_is_written(data, tmp_path, forward_calls):
    table = cached_teacher(tiny_teacher(), data, None).table
    assert table.shape == (len(data.train), 2, 2) and not (tmp_path / "c").exists()


# --- head mode --------------------------------------------------------------------------------

def train_head(model, data, method, steps: int = 3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    model.eval()  # backbone frozen in eval mode, as set_train_mode leaves frozen BatchNorm
    for batch in epoch_batches(data, 0)[:steps]:
        loss = method(batch, model, None)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in find_head(model)[1].state_dict().items()}


def test_head_training_on_stored_features_equals_training_through_the_backbone(data, tmp_path):
    mean, std = data.normalization
    through_backbone = tiny_teacher()
    freeze_all_but_head(through_backbone)
    on_features = tiny_teacher()
    freeze_all_but_head(on_features)
    wrapped = HeadOnStoredFeatures(build_method("ce"), on_features, data.train, channels=3, mean=mean,
                                   std=std, batch_size=5, cache_dir=tmp_path / "c")
    assert wrapped.table.shape == (len(data.train), 2, find_head(on_features)[1].in_features)
    expected = train_head(through_backbone, data, build_method("ce"))
    got = train_head(on_features, data, wrapped)
    assert not torch.equal(got["weight"], find_head(tiny_teacher())[1].weight)  # it did train
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


def test_pipeline_head_mode_trains_the_head_on_stored_features(tmp_path, private_cache_dir):
    """teacher.mode=head through the pipeline: features stored once per view, only the head moves."""
    from conftest import tiny_config

    from kdistill.config import from_dict
    from kdistill.pipeline import train_teacher

    root = make_image_folder(tmp_path / "d", per_class=12)
    config = from_dict(tiny_config(root, tmp_path / "out", teacher={"mode": "head"}))
    data = load_dataset(DataConfig(root=str(root), input_size=16, val_fraction=0.25, test_fraction=0.25))
    torch.manual_seed(config.seed)
    initial = build_model("tiny_cnn_d2", 2, input_size=16, width=4).state_dict()
    model, meta = train_teacher(config, data, tmp_path / "out", resume=False)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, initial[k])}
    head = find_head(model)[0]
    assert moved == {f"{head}.weight", f"{head}.bias"}
    assert len(list((private_cache_dir / "teacher").glob("head-input-*.safetensors"))) == 1


def test_kd_speed_benchmark_prints_the_documented_keys(tmp_path, capsys):
    """The benchmark runs end to end on a tiny folder and reports every key the README names."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kd_speed", Path(__file__).parents[1] / "benchmarks" / "kd_speed.py")
    kd_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kd_speed)
    root = make_image_folder(tmp_path / "d", per_class=8, size=20)
    figures = kd_speed.main(["--data", str(root), "--images", "12", "--size", "16", "--batch", "4",
                             "--naive-steps", "1", "--epochs", "1", "--rounds", "1", "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("naive_img_s", "student_img_s", "distill_img_s", "distill_vs_student",
                "distill_vs_naive", "data_wait_share", "cache_build_s"):
        assert printed[key] == figures[key] and printed[key] > 0
    assert 0 < printed["data_wait_share"] < 1


def test_unwritable_teacher_cache_keeps_the_table_in_memory(data, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    model = tiny_teacher()
    table = cached_teacher(model, data, not_a_folder).table
    torch.testing.assert_close(table, cached_teacher(model, data, None).table, atol=0, rtol=0)
