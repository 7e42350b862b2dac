"""``kdistill doctor``: check an image folder before training on it.

Counts images per class and split; finds what ``kdistill run`` refuses (a single class, an empty
class folder, a split whose classes differ from train/'s), unreadable, truncated, zero-byte and
non-image files, byte-identical duplicates (within and across splits), label conflicts (the same
bytes filed under two classes), patient keys present in more than one split (leakage), and a
validation split too small to fit a threshold or temperature on; summarizes image sizes and modes.
It reads every file once and changes nothing.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from kdistill.data.decode import UNREADABLE_ERRORS
from kdistill.data.folder import IMAGE_SUFFIXES, SPLIT_NAMES, class_folder_files
from kdistill.data.split import patient_keys
from kdistill.errors import DataError, KdistillError
from kdistill.eval.sample_size import small_fit_warning


def examine(root: Path, patient_regex: str, split_settings: dict | None = None) -> dict:
    """The doctor's findings as plain data (what ``--json`` prints). ``split_settings``: the
    ``data`` keys that decide the carved splits (val_fraction, test_fraction, min_val_images,
    split_seed, test_match), for the validation-size check (None: no such check)."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    split_dirs = [root / name for name in SPLIT_NAMES if (root / name).is_dir()]
    if not split_dirs:
        raise DataError(f"{root}: no train/, val/ or test/ folder")
    found = _Findings()
    for split_dir in split_dirs:
        for class_dir in _class_dirs(split_dir):
            # The files `kdistill run` reads: a broken link is unreadable, not invisible.
            for path in class_folder_files(class_dir):
                found.add(split_dir.name, class_dir.name, path, patient_regex)
    summary = found.summary(str(root))
    summary["folder_problems"] = folder_problems(root, split_dirs)
    summary["small_validation"] = None
    if not summary["folder_problems"] and split_settings is not None:
        summary["small_validation"] = _small_validation(root, patient_regex, split_settings)
    return summary


def split_settings(data_config) -> dict:
    """The keys of a ``DataConfig`` that decide the carved splits, as :func:`examine` takes them."""
    keys = ("val_fraction", "test_fraction", "min_val_images", "split_seed", "test_match")
    return {key: getattr(data_config, key) for key in keys}


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_problems(root: Path, split_dirs: list[Path]) -> list[str]:
    """What makes ``kdistill run`` refuse the folder's layout: no train/, fewer than two classes,
    a class folder without images, a split whose class folders differ from train/'s."""
    train = root / "train"
    if train not in split_dirs:
        return [f"{root}: no train/ folder (a run needs train/<class>/<images>)"]
    classes = [p.name for p in _class_dirs(train)]
    problems = []
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        problems.append(f"{train}: {len(classes)} class folder(s) ({found}); a run needs at least 2")
    for split_dir in split_dirs:
        here = [p.name for p in _class_dirs(split_dir)]
        problems += [f"{split_dir}: no {name}/ folder, which train/ has" for name in classes if name not in here]
        problems += [f"{split_dir / name}: not a class of train/" for name in here if name not in classes]
        problems += [f"{split_dir / name}: no images" for name in here if not _has_image(split_dir / name)]
    return problems


def _has_image(class_dir: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") for p in class_folder_files(class_dir))


def _small_validation(root: Path, patient_regex: str, settings: dict) -> str | None:
    """The warning ``run`` would give for the validation split it selects on (a supplied val/, or
    one carved from train/ by patient), counted before decoding, with the default calibration (a
    temperature, and for two classes a threshold)."""
    from kdistill.data.datasets import planned_split_counts  # datasets imports the doctor

    try:
        classes, counts = planned_split_counts(root, patient_regex, **settings)
    except KdistillError:  # a layout run refuses is reported above; this check needs a valid one
        return None
    fitted = ["temperature", "threshold"] if len(classes) == 2 else ["temperature"]
    return small_fit_warning(dict(zip(classes, counts["val"])), fitted)


class _Findings:
    """Accumulates what one pass over the files shows."""

    def __init__(self):
        self.splits: dict[str, Counter] = defaultdict(Counter)
        self.unreadable: list[dict] = []
        self.non_images: list[str] = []
        self.by_hash: dict[str, list[str]] = defaultdict(list)
        self.split_of: dict[str, str] = {}
        self.label_of: dict[str, str] = {}
        self.patients: dict[str, set[str]] = defaultdict(set)
        self.sizes: Counter = Counter()
        self.modes: Counter = Counter()

    def add(self, split: str, label: str, path: Path, patient_regex: str) -> None:
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            self.non_images.append(str(path))
            return
        try:
            data = path.read_bytes()
        except OSError as exc:  # a broken or looping symbolic link
            self.unreadable.append({"path": str(path), "reason": f"cannot read the file ({exc.strerror})"})
            return
        problem = _decode_problem(data)
        if problem:
            self.unreadable.append({"path": str(path), "reason": problem})
            return
        with Image.open(io.BytesIO(data)) as image:
            self.sizes[f"{image.width}x{image.height}"] += 1
            self.modes[image.mode] += 1
        self.splits[split][label] += 1
        self.by_hash[hashlib.sha256(data).hexdigest()].append(str(path))
        self.split_of[str(path)] = split
        self.label_of[str(path)] = label
        self.patients[patient_keys([path], patient_regex)[0]].add(split)

    def summary(self, root: str) -> dict:
        duplicates = [sorted(paths) for paths in self.by_hash.values() if len(paths) > 1]
        across = [group for group in duplicates if len({self.split_of[p] for p in group}) > 1]
        leaking = {key: sorted(splits) for key, splits in sorted(self.patients.items()) if len(splits) > 1}
        conflicts = [{"classes": sorted({self.label_of[p] for p in group}), "paths": group}
                     for group in sorted(duplicates) if len({self.label_of[p] for p in group}) > 1]
        return {
            "root": root,
            "splits": {split: dict(sorted(counts.items())) for split, counts in self.splits.items()},
            "unreadable": self.unreadable,
            "non_images": self.non_images,
            "duplicate_groups": sorted(duplicates),
            "duplicate_groups_across_splits": sorted(across),
            "leaking_groups": leaking,
            "label_conflicts": conflicts,
            "patients": len(self.patients),
            "image_sizes": dict(self.sizes.most_common()),
            "image_modes": dict(self.modes.most_common()),
        }


def _decode_problem(data: bytes) -> str | None:
    """Why these bytes are not a usable image, or None. Decoding fully catches truncation."""
    if not data:
        return "zero-byte file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:  # its message would name the in-memory buffer, not the file
        return "cannot decode (not an image format Pillow recognises)"
    except UNREADABLE_ERRORS as exc:
        return f"cannot decode ({exc})"
    return None


def has_blocking_problems(findings: dict) -> bool:
    """What ``--strict`` fails on: a layout ``run`` refuses, unreadable images, label conflicts,
    patients leaking across splits, a validation split too small to fit on."""
    return bool(findings["folder_problems"] or findings["unreadable"] or findings["label_conflicts"]
                or findings["leaking_groups"] or findings["small_validation"])


def blocking_summary(findings: dict) -> str:
    """One line counting what ``--strict`` failed on."""
    return (f"{len(findings['unreadable'])} unreadable images, {len(findings['leaking_groups'])} patients "
            f"in more than one split, {len(findings['label_conflicts'])} label conflicts, "
            f"{len(findings['folder_problems'])} folder problems"
            + (", validation too small to fit on" if findings["small_validation"] else ""))


def format_summary(findings: dict) -> str:
    """A readable report of the findings."""
    lines = [f"kdistill doctor: {findings['root']}", ""]
    for split, counts in findings["splits"].items():
        total = sum(counts.values())
        shares = ", ".join(f"{label} {n} ({n / total:.1%})" for label, n in counts.items())
        lines.append(f"  {split:5s} {total:6d} images: {shares}")
    lines.append(f"  patients (by data.patient_regex): {findings['patients']}")
    lines.append(f"  sizes: {_top(findings['image_sizes'])}; modes: {_top(findings['image_modes'])}")
    lines += ["", *_problem_lines(findings)]
    return "\n".join(lines)


def _problem_lines(findings: dict) -> list[str]:
    lines = [f"folder problems (kdistill run refuses these): {len(findings['folder_problems'])}"]
    lines += [f"  {problem}" for problem in findings["folder_problems"]]
    lines.append(f"unreadable images: {len(findings['unreadable'])}")
    lines += [f"  {item['path']}: {item['reason']}" for item in findings["unreadable"][:20]]
    lines.append(f"non-image files (skipped in training): {len(findings['non_images'])}")
    lines += [f"  {path}" for path in findings["non_images"][:10]]
    groups = findings["duplicate_groups"]
    lines.append(f"byte-identical duplicate groups: {len(groups)} "
                 f"({len(findings['duplicate_groups_across_splits'])} across splits)")
    lines += [f"  {' = '.join(Path(p).name for p in group)}" for group in groups[:10]]
    conflicts = findings["label_conflicts"]
    lines.append(f"label conflicts (the same bytes under different classes): {len(conflicts)}")
    lines += [f"  {' = '.join(_class_path(p) for p in item['paths'])}" for item in conflicts[:10]]
    leaking = findings["leaking_groups"]
    lines.append(f"patients in more than one split (leakage): {len(leaking)}")
    lines += [f"  {key}: {', '.join(splits)}" for key, splits in list(leaking.items())[:20]]
    lines.append(f"validation split: {findings['small_validation'] or 'large enough to fit on'}")
    return lines


def _class_path(path: str) -> str:
    """``train/NORMAL/a.png``: the file with its split and class folder, which a conflict is about."""
    return "/".join(Path(path).parts[-3:])


def _top(counts: dict, limit: int = 3) -> str:
    items = list(counts.items())
    text = ", ".join(f"{key} x{n}" for key, n in items[:limit])
    return text + (f", ... ({len(items)} kinds)" if len(items) > limit else "")


def unlabeled_findings(folder: Path, held_out: dict[str, list]) -> dict:
    """Checks of an unlabelled image folder (any sub-folders): the readable images, the unreadable
    ones, and byte-identical copies of a held-out image (``held_out``: split name -> its paths),
    which would leak validation or test images into training."""
    if not folder.is_dir():
        raise DataError(f"data.unlabeled: {folder}: folder not found")
    held_by_hash: dict[str, tuple[str, str]] = {}
    for split, paths in held_out.items():
        for path in paths:
            try:
                held_by_hash.setdefault(hashlib.sha256(Path(path).read_bytes()).hexdigest(), (split, str(path)))
            except OSError:
                continue  # an unreadable held-out file is the loader's to report
    found = {"folder": str(folder), "images": [], "unreadable": [], "non_images": [],
             "duplicates_of_held_out": []}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            found["non_images"].append(str(path))
            continue
        data = path.read_bytes()
        problem = _decode_problem(data)
        if problem:
            found["unreadable"].append({"path": str(path), "reason": problem})
            continue
        found["images"].append(str(path))
        match = held_by_hash.get(hashlib.sha256(data).hexdigest())
        if match:
            found["duplicates_of_held_out"].append({"path": str(path), "split": match[0], "same_as": match[1]})
    return found
