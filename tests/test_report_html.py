"""report.html: rendered from a synthetic results.json that follows the contract and from a real
tiny run, then opened in headless Chromium: a screenshot must not be blank and every image must load."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder, tiny_config, write_config
from kdistill.cli import main
from kdistill.report.html import html_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
CLASSES = ["NORMAL", "PNEUMONIA"]


# ---------------------------------------------------------------- the synthetic fixture


def _row(model_id: str, role: str, seed: int, labels: np.ndarray, probs: np.ndarray, latency: float,
         params: int) -> dict:
    """One ``results["models"]`` row with every key of the contract, computed from ``probs``."""
    threshold = 0.4
    predicted = (probs[:, 1] >= threshold).astype(int)
    matrix = [[int(((labels == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    accuracy = float((predicted == labels).mean())
    sensitivity, specificity = matrix[1][1] / sum(matrix[1]), matrix[0][0] / sum(matrix[0])
    history = [{"epoch": e, "train_loss": 0.7 / e, "train_accuracy": 0.6 + 0.05 * e, "lr": 0.01,
                "val_loss": 0.75 / e, "val_accuracy": 0.55 + 0.06 * e, "val_balanced_accuracy": 0.5 + 0.07 * e,
                "val_auc": 0.6 + 0.05 * e, "seconds": 1.0} for e in range(1, 6)]
    at_half = {"accuracy": accuracy - 0.01, "balanced_accuracy": 0.8, "sensitivity": 0.9, "specificity": 0.7,
               "confusion_matrix": matrix}
    return {"id": model_id, "name": "resnet18" if role == "teacher" else "reference_student", "role": role,
            "seed": seed, "params": params, "macs": params * 50, "accuracy": accuracy,
            "balanced_accuracy": (sensitivity + specificity) / 2, "sensitivity": sensitivity,
            "specificity": specificity, "auc": 0.9, "ece": 0.03, "ece_uncalibrated": 0.08,
            "confusion_matrix": matrix, "threshold": threshold, "threshold_rule": "balanced_accuracy",
            "at_0.5": at_half, "temperature": 1.7, "positive_class": "PNEUMONIA", "images": len(labels),
            "checkpoint": f"runs/x/{model_id}", "selected": None, "training": {}, "history": history,
            "ci": {"accuracy": [accuracy - 0.04, min(1.0, accuracy + 0.03)], "auc": [0.85, 0.94]},
            "latency_ms_batch1": latency, "latency_spread_ms": 0.1, "throughput_img_s": 1000 / latency,
            "threads": 1, "speedup_vs_teacher": 9.0 / latency, "runtime": "onnxruntime fp32"}


def synthetic_results(seeds=(0, 1, 2)) -> dict:
    """A results.json following the session's contract: teacher plus baseline/distilled per seed."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    models, probabilities = [], {}
    specs = [("teacher", "teacher", 0, 3.0, 9.0, 11_000_000)]
    specs += [(f"{role}-seed{s}", role, s, skill, 0.3 + 0.01 * s, 100_474)
              for s in seeds for role, skill in (("baseline", 1.5), ("distilled", 1.8))]
    for model_id, role, seed, skill, latency, params in specs:
        logit = skill * (2 * labels - 1) + rng.normal(0, 1.2, len(labels))
        positive = 1 / (1 + np.exp(-logit))
        probs = np.stack([1 - positive, positive], 1)
        probabilities[model_id] = probs.tolist()
        models.append(_row(model_id, role, seed, labels, probs, latency, params))
    summary = {role: {metric: _mean_std_n([r[metric] for r in models if r["role"] == role])
                      for metric in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "ece")}
               for role in ("teacher", "baseline", "distilled")}
    paired = [{"seed": s, "baseline": f"baseline-seed{s}", "distilled": f"distilled-seed{s}", "test": "mcnemar",
               "baseline_only_correct": 3, "distilled_only_correct": 9, "p_value": 0.146 + 0.1 * s,
               "accuracy_diff": 0.05, "auc_diff": 0.02, "auc_diff_ci": [-0.01, 0.05]} for s in seeds]
    doctor = {"root": "data/<chest>", "splits": {"train": {"NORMAL": 40, "PNEUMONIA": 80}},
              "unreadable": [{"path": "train/NORMAL/bad.jpeg", "reason": "zero-byte file"}],
              "non_images": [], "duplicate_groups": [["train/a.jpeg", "train/b.jpeg"]],
              "duplicate_groups_across_splits": [], "leaking_groups": {"person7": ["test", "train"]},
              "patients": 50, "image_sizes": {"16x16": 120}, "image_modes": {"L": 120}}
    dataset = {"root": "data/chest", "classes": CLASSES, "positive_class": "PNEUMONIA",
               "sizes": {"train": 200, "val": 60, "test": 120}, "class_counts": {"test": [60, 60]},
               "sources": {"test": "carved from train/"}, "evaluated_on": "test", "skipped_files": []}
    return {"kdistill_version": "0.1.0", "dataset": dataset, "models": models, "export": None, "doctor": doctor,
            "machine": {"platform": "Linux", "torch": "2.14.1"}, "wall_seconds": 12.3,
            "predictions": {"labels": labels.tolist(), "probabilities": probabilities},
            "summary": summary, "paired_tests": paired}


def _mean_std_n(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


# ---------------------------------------------------------------- looking at the page


class _Images(HTMLParser):
    """Collects <img> sources and every other URL-bearing attribute."""

    def __init__(self):
        super().__init__()
        self.images, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.images.append(value)
            elif name in ("src", "href", "action", "data", "poster"):
                self.urls.append(value)


def parse(page: str) -> _Images:
    parser = _Images()
    parser.feed(page)
    return parser


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


# After load, count the images that decoded (complete, natural width > 0) and say so on <body>.
IMAGE_CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', ok + '/' + images.length);
});
</script>"""


def loaded_images(page_path: Path, tmp_path: Path) -> tuple[int, int]:
    """(images decoded, images on the page) as Chromium saw them. The checking script goes into a
    copy of the page whose policy also allows inline scripts; images stay under the report's own
    ``img-src`` rule."""
    page = page_path.read_text()
    checked = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    checked = checked.replace("</body>", IMAGE_CHECK + "</body>", 1)
    copy = tmp_path / "checked.html"
    copy.write_text(checked)
    result = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", copy.as_uri())
    found = re.search(r'<body[^>]*data-images="(\d+)/(\d+)"', result.stdout)
    assert found, f"image check did not run: {result.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def screenshot(page_path: Path, tmp_path: Path, height: int = 2400) -> np.ndarray:
    png = tmp_path / "screenshot.png"
    result = _chromium(tmp_path, f"--screenshot={png}", f"--window-size=1280,{height}", page_path.as_uri())
    assert png.is_file(), f"no screenshot: {result.stderr[-2000:]}"
    return np.asarray(Image.open(png).convert("L"), dtype=float)


def needs_chromium():
    if CHROMIUM is None:
        if os.environ.get("KDISTILL_REQUIRE_CHROMIUM"):
            pytest.fail("KDISTILL_REQUIRE_CHROMIUM is set but chromium is not installed")
        pytest.skip("chromium not installed (apt-get install -y chromium)")


def check_renders(page_path: Path, tmp_path: Path, expected_images: int) -> None:
    """Headless Chromium: every image decodes, and the screenshot has content (not a blank page)."""
    needs_chromium()
    ok, total = loaded_images(page_path, tmp_path)
    assert total == expected_images and ok == total, f"{ok} of {total} images loaded, expected {expected_images}"
    pixels = screenshot(page_path, tmp_path)
    assert pixels.std() > 20, f"screenshot looks blank (pixel std {pixels.std():.1f})"
    assert (pixels < 128).mean() > 0.01, "screenshot has almost no dark pixels (no text or plots)"


# ---------------------------------------------------------------- tests


def test_synthetic_report_has_every_section_and_renders(tmp_path):
    """Contract-following results: verdict, tables, all plots, doctor, config; Chromium renders it."""
    results = synthetic_results()
    page = html_report(results, "out: runs/x\nseeds: [0, 1, 2]\n")
    for heading in ("Verdict", "Comparison (mean ± std over seeds", "Every model", "Paired tests",
                    "Reliability diagrams", "Confusion matrices", "Training curves", "Data doctor",
                    "Resolved config", "Threshold 0.5 vs chosen"):
        assert heading in page, heading
    models = len(results["models"])
    # accuracy-vs-latency + ROC, and per model a reliability diagram, a confusion matrix, training curves
    images = parse(page).images
    assert len(images) == 2 + 3 * models and all(src.startswith("data:image/png;base64,") for src in images)
    assert "Distillation did not help significantly" in page and "p = 0.146 (seed 0)" in page
    summary = results["summary"]["distilled"]["accuracy"]
    assert f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}" in page
    for row in results["models"]:
        assert f"<td>{row['id']}<span" in page and f"{100 * row['accuracy']:.1f}" in page
    assert "data/&lt;chest&gt;" in page and "person7: test, train" in page
    assert '0.31<span class="muted">onnxruntime fp32</span>' in page  # latency with its runtime
    path = tmp_path / "report.html"
    path.write_text(page)
    check_renders(path, tmp_path, len(images))


def test_verdict_follows_the_paired_tests():
    """Significant and positive in every seed -> helped; significant and negative -> hurt."""
    results = synthetic_results(seeds=(0, 1))
    for test in results["paired_tests"]:
        test["p_value"] = 0.001
    assert "Distillation helped" in html_report(results, "")
    for test in results["paired_tests"]:
        test["accuracy_diff"] = -0.05
    assert "Distillation hurt" in html_report(results, "")
    results["paired_tests"][0]["p_value"] = 0.5
    assert "Mixed: distillation was significantly better in 0 and significantly worse in 1 of 2 seeds" in html_report(results, "")


def test_one_seed_shows_each_value_without_a_spread():
    """A single seed has no spread to show: its value alone, never "± 0.0", in both reports; several
    seeds keep mean ± std."""
    from kdistill.report.markdown import markdown_report

    one = synthetic_results(seeds=(0,))
    accuracy = f"{100 * one['summary']['distilled']['accuracy']['mean']:.1f}"
    for text in (html_report(one, ""), markdown_report(one)):
        assert "± 0.0" not in text and "± 0.000" not in text
        assert accuracy in text and "one seed" in text.lower()
    several = synthetic_results(seeds=(0, 1))
    for text in (html_report(several, ""), markdown_report(several)):
        assert "mean ± std over seeds" in text.lower()
        assert f"{100 * several['summary']['distilled']['accuracy']['mean']:.1f} ± " in text


def test_strings_from_data_and_config_are_escaped():
    """A model name, a doctor path or a config value cannot inject markup."""
    results = synthetic_results(seeds=(0,))
    results["models"][0]["name"] = "<script>alert(1)</script>"
    results["doctor"]["unreadable"][0]["path"] = "<img src=x onerror=alert(2)>"
    page = html_report(results, "note: </pre><script>alert(3)</script>")
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;/pre&gt;&lt;script&gt;alert(3)" in page


def test_page_requests_nothing_from_outside():
    """Only data: images; no other URL attribute; the policy forbids everything else."""
    page = html_report(synthetic_results(seeds=(0,)), "")
    parsed = parse(page)
    assert parsed.urls == [] and parsed.images
    assert "default-src 'none'; img-src data:" in page
    assert "http://" not in page and "https://" not in page


def test_older_results_without_the_new_keys_render():
    """A results.json from before seeds/calibration/paired tests: no crash, the tables it can fill."""
    results = synthetic_results(seeds=(0,))
    for key in ("predictions", "summary", "paired_tests", "doctor"):
        results.pop(key)
    for row in results["models"]:
        for key in ("id", "seed", "ci", "history", "at_0.5", "temperature", "ece_uncalibrated", "threshold_rule"):
            row.pop(key)
    page = html_report(results, "")
    assert "No paired test in this results file" in page and "Every model" in page
    assert "<td>teacher<span" in page and "<td>distilled<span" in page
    assert len(parse(page).images) == 1 + 3  # accuracy vs latency + 3 confusion matrices


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One real `kdistill run` on generated 16x16 images with tiny models, two seeds (seconds)."""
    base = tmp_path_factory.mktemp("html_run")
    root = make_image_folder(base / "data")
    config_path = write_config(base / "config.yaml", tiny_config(root, base / "out", seeds=[0, 1]))
    assert main(["run", str(config_path)]) == 0
    return base / "out"


@pytest.mark.slow
def test_real_run_writes_a_report_that_agrees_with_results_json(tiny_run, tmp_path):
    """`kdistill run` writes report.html; its table shows results.json's figures; Chromium renders it."""
    page_path = tiny_run / "report.html"
    page = page_path.read_text()
    results = json.loads((tiny_run / "results.json").read_text())
    for row in results["models"]:
        assert f"{100 * row['accuracy']:.1f}" in page and f"{row['auc']:.3f}" in page
    p_values = ", ".join(f"{t['p_value']:{'.3f' if t['p_value'] >= 0.001 else '.1e'}} (seed {t['seed']})"
                         for t in results["paired_tests"])
    assert len(results["paired_tests"]) == 2 and f"per seed: p = {p_values}." in page
    accuracy = results["summary"]["distilled"]["accuracy"]
    assert accuracy["n"] == 2 and f"{100 * accuracy['mean']:.1f} ± {100 * accuracy['std']:.1f}" in page
    images = parse(page).images
    assert images, "no plots in the report"
    check_renders(page_path, tmp_path, len(images))


@pytest.mark.slow
def test_report_command_regenerates_both_reports(tiny_run):
    """`kdistill report RUN_DIR` rewrites report.md and report.html from results.json."""
    for name in ("report.md", "report.html"):
        (tiny_run / name).unlink()
    assert main(["report", str(tiny_run)]) == 0
    assert "<h1>kdistill report</h1>" in (tiny_run / "report.html").read_text()
    assert "| model | role |" in (tiny_run / "report.md").read_text()


def test_render_check_catches_broken_images_and_blank_pages(tmp_path):
    """The Chromium checks can fail: a corrupt embedded PNG is not counted as loaded, and an empty
    page's screenshot has no variance."""
    needs_chromium()
    page = html_report(synthetic_results(seeds=(0,)), "")
    first = parse(page).images[0]
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace(first, "data:image/png;base64,iVBORw0KGgoAAAAA", 1))
    ok, total = loaded_images(broken, tmp_path)
    assert total == len(parse(page).images) and ok == total - 1
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert screenshot(blank, tmp_path).std() < 1
