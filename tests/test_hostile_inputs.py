"""Hostile files in a data folder: truncated JPEG, zero-byte file, PNG with alpha, 16-bit grayscale
PNG, decompression-bomb header, symbolic link loop, a file that vanishes between scan and decode.

Each one alone (what ``read_image`` / ``decode_files`` / ``scan_split`` make of it), then all of
them together through ``kdistill run`` with ``on_bad_image: skip`` and ``error``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kdistill.data.datasets as datasets_module
import kdistill.data.decode as decode_module
from conftest import leftover_temp_files, tiny_config, write_config
from kdistill.cli import main
from kdistill.data.decode import decode_files, read_image
from kdistill.data.folder import scan_split

# --- makers -------------------------------------------------------------------------------


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def rgba_png(path: Path) -> Path:
    """Left half opaque gray 200; right half fully transparent over pure red."""
    pixels = np.zeros((16, 16, 4), np.uint8)
    pixels[:, :8] = (200, 200, 200, 255)
    pixels[:, 8:] = (255, 0, 0, 0)
    Image.fromarray(pixels, mode="RGBA").save(path)
    return path


def gray16_png(path: Path, values=(0, 1000, 257 * 100, 65535)) -> Path:
    """A 16-bit grayscale PNG (PIL mode I;16), one column per value."""
    row = np.repeat(np.asarray(values, np.uint16), 16 // len(values))
    Image.fromarray(np.tile(row, (16, 1))).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A 16x16 PNG whose header claims ``width`` x ``height``: tiny on disk, gigabytes if decoded."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 90).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of type + IHDR data
    path.write_bytes(bytes(data))
    return path


def symlink_loop(path: Path) -> Path:
    """``path`` links to itself; a sibling ``again`` links back to the parent folder as well."""
    path.symlink_to(path.name)
    (path.parent / "again").symlink_to("..", target_is_directory=True)
    return path


# --- each file alone ----------------------------------------------------------------------


def reason_for(path: Path) -> str:
    arrays, kept, bad = decode_files([path], 16, "skip")
    assert kept == [] and len(bad) == 1 and bad[0][0] == path
    return bad[0][1]


def test_truncated_jpeg(tmp_path):
    assert reason_for(truncated_jpeg(tmp_path / "a.jpeg")).startswith("cannot read image (")


def test_zero_byte_file(tmp_path):
    assert reason_for(zero_byte(tmp_path / "a.png")) == "empty file (0 bytes)"


def test_png_with_alpha_is_composited_onto_black(tmp_path):
    """Transparent pixels become black, not the red hidden under alpha 0; opaque ones keep their value."""
    image = read_image(rgba_png(tmp_path / "a.png"), 16)
    assert (image[:, :8] == 200).all()
    assert (image[:, 8:] == 0).all()


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """0, 1000, 25700, 65535 -> 0, 4, 100, 255 (divide by 257): 1000 is not clipped to 255."""
    image = read_image(gray16_png(tmp_path / "a.png"), 16)
    assert image.shape == (16, 16, 3)
    assert image[0, ::4, 0].tolist() == [0, 4, 100, 255]


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    """20000 x 20000 claimed: refused as too large (by PIL's own guard, which fires first at this size)."""
    assert reason_for(bomb_png(tmp_path / "a.png")).startswith("image too large (")


def test_kdistill_pixel_limit_applies_below_pil_limit(tmp_path, monkeypatch):
    """kdistill's explicit limit is checked from the header, whatever PIL's own limit is."""
    monkeypatch.setattr(decode_module, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "a.png"
    Image.new("L", (16, 16), 90).save(path)
    assert reason_for(path) == ("image too large (16 x 16 = 256 pixels exceeds the limit of 100 "
                                "(possible decompression bomb))")


def test_symlink_loop_is_listed_and_reported_not_followed(tmp_path):
    """The scan lists the looping link (so it is reported), never enters ``again -> ..``, and ends."""
    normal, other = tmp_path / "NORMAL", tmp_path / "PNEUMONIA"
    for folder in (normal, other):
        folder.mkdir()
        Image.new("L", (16, 16), 90).save(folder / "ok.png")
    loop = symlink_loop(normal / "loop.png")
    split = scan_split(tmp_path, ["NORMAL", "PNEUMONIA"])
    assert split.paths == [loop, normal / "ok.png", other / "ok.png"]
    assert reason_for(loop) == "symbolic link loop"


def test_file_vanished_before_decoding(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (16, 16), 90).save(path)
    path.unlink()
    assert reason_for(path) == "file vanished before it could be read"


# --- all of them through `kdistill run` ---------------------------------------------------


def plant_hostile_files(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Bad files (to be skipped) and odd-but-valid ones (to be used) among the generated images."""
    normal, pneumonia = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    bad = {"truncated": truncated_jpeg(normal / "IM-0901-0001.jpeg"),
           "zero_byte": zero_byte(pneumonia / "person901_bacteria_1.png"),
           "bomb": bomb_png(normal / "IM-0902-0001.png"),
           "loop": symlink_loop(pneumonia / "person902_bacteria_1.png"),
           "vanishing": normal / "IM-0903-0001.png"}
    Image.new("L", (16, 16), 70).save(bad["vanishing"])
    good = {"rgba": rgba_png(normal / "IM-0904-0001.png"),
            "gray16": gray16_png(pneumonia / "person903_bacteria_1.png")}
    return bad, good


def vanish_after_scan(monkeypatch, path: Path) -> None:
    """Delete ``path`` after the folder scans listed it, as the loader starts decoding."""
    real = datasets_module.decode_uncommitted

    def delete_then_decode(paths, *args):
        path.unlink(missing_ok=True)
        return real(paths, *args)

    monkeypatch.setattr(datasets_module, "decode_uncommitted", delete_then_decode)


def run_hostile(image_root: Path, tmp_path: Path, monkeypatch, capsys, *overrides: str):
    bad, good = plant_hostile_files(image_root)
    vanish_after_scan(monkeypatch, bad["vanishing"])
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    code = main(["run", str(config), "export=false", *overrides])
    return code, capsys.readouterr().err, out, bad, good


@pytest.mark.slow
def test_every_hostile_file_is_skipped_listed_and_nothing_is_half_written(
        image_root, tmp_path, monkeypatch, capsys):
    """skip: the run completes; the five bad files are logged with their reason and listed in
    results.json and counted in report.md; RGBA and 16-bit files are used; no temp leftovers."""
    code, err, out, bad, good = run_hostile(image_root, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["dataset"]["skipped_files"]) == sorted(str(p) for p in bad.values())
    for reason in ("cannot read image", "empty file (0 bytes)", "image too large", "symbolic link loop",
                   "file vanished before it could be read"):
        assert reason in err, reason
    assert "5 unreadable files skipped" in (out / "report.md").read_text()
    used = {name for split in json.loads((out / "splits.json").read_text()).values() for name in split["files"]}
    assert {str(p) for p in good.values()} <= used
    assert not {str(p) for p in bad.values()} & used
    assert leftover_temp_files(out) == []


def test_hostile_file_with_on_bad_image_error_exits_naming_it(image_root, tmp_path, monkeypatch, capsys):
    """error: exit 2, one line naming one of the bad files and its reason, no results written."""
    code, err, out, bad, _ = run_hostile(image_root, tmp_path, monkeypatch, capsys, "data.on_bad_image=error")
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("kdistill: error:")]
    assert len(lines) == 1, err
    assert any(f"{path}: " in lines[0] for path in bad.values()), lines[0]
    assert not (out / "results.json").exists()
    if out.exists():
        assert leftover_temp_files(out) == []
