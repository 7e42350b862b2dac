"""Typed, validated run configuration: YAML file + ``key=value`` overrides -> dataclasses.

Every key is declared below with its type and default; an unknown key, a wrong type or a value
outside its allowed set is a :class:`ConfigError` that names the key. Builders never receive these
objects: the pipeline unpacks them into plain keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from kdistill.errors import ConfigError

# Chest X-ray file names: person123_bacteria_456.jpeg, IM-0115-0001.jpeg, NORMAL2-IM-0587-0001.jpeg.
# The first capture group is the patient key; files that do not match are their own group.
DEFAULT_PATIENT_REGEX = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"


@dataclass
class TrainConfig:
    """One training recipe (the teacher has its own; baseline and distilled students share one)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant"] = "cosine"
    select_metric: Literal["balanced_accuracy", "accuracy", "auc", "loss"] = "balanced_accuracy"
    class_weighting: Literal["none", "balanced"] = "none"


@dataclass
class DataConfig:
    root: Optional[str] = None  # a folder with train/ [val/] [test/], one sub-folder per class
    dataset: Optional[Literal["digits"]] = None  # or a built-in dataset instead of root
    input_size: int = 224
    hflip: bool = True  # random horizontal flip in training (off for data where mirroring misleads)
    channels: Literal[1, 3] = 3
    positive_class: Optional[str] = None  # binary data: the class that sensitivity refers to
    patient_regex: str = DEFAULT_PATIENT_REGEX
    val_fraction: float = 0.15  # carved from train, grouped by patient, when val/ is too small
    test_fraction: float = 0.15  # carved from train the same way when test/ is missing
    min_val_images: int = 100  # a val/ folder smaller than this is not trusted for selection
    split_seed: int = 0  # fixed apart from the training seed so every run sees the same split
    max_images_per_class: Optional[int] = None  # per split; for quick trials and tests
    on_bad_image: Literal["skip", "error"] = "skip"
    # Decoded images (and teacher outputs) cached on disk and reused across runs. auto:
    # $KDISTILL_CACHE_DIR or ~/.cache/kdistill; null or off: decode into memory every run.
    cache_dir: Optional[str] = "auto"


@dataclass
class TeacherConfig:
    model: str = "resnet18"
    model_args: dict = field(default_factory=dict)
    pretrained: bool = True  # ImageNet weights through torchvision's weights API
    weights: Optional[str] = None  # a local weights file (.safetensors or .pth) instead
    mode: Literal["full", "head"] = "full"  # head: backbone frozen, only the classifier trains
    checkpoint: Optional[str] = None  # reuse an already fine-tuned teacher checkpoint directory
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=1e-3))


@dataclass
class StudentConfig:
    model: str = "reference_student"
    model_args: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    # auto: a student with a CPU fast path (the reference student) uses it where it applies;
    # off: every student runs through its own modules (forward hooks on them fire).
    fast_path: Literal["auto", "off"] = "auto"


@dataclass
class DistillConfig:
    method: Literal["kd", "article"] = "kd"
    alpha: float = 0.5
    temperature: float = 4.0
    teacher_cache: bool = True  # teacher logits computed once per (image, flip) instead of per step
    # dtype of the stored teacher logits (on disk under data.cache_dir and in memory); float16
    # halves the table at ~1e-3 relative error, float32 replays the live teacher exactly.
    cache_dtype: Literal["float32", "float16"] = "float32"


@dataclass
class TuneConfig:
    """``kdistill tune`` search ranges, ``[low, high]``; temperature and lr on a log scale, since
    their effect is multiplicative (T divides the logits, lr scales every step)."""

    alpha: list[float] = field(default_factory=lambda: [0.1, 0.9])
    temperature: list[float] = field(default_factory=lambda: [1.0, 8.0])
    lr: list[float] = field(default_factory=lambda: [1e-4, 3e-3])
    trials: int = 20


# The values ``kdistill tune`` searches, as config keys; a ``tuned`` file may set only these.
TUNED_KEYS = ("distill.alpha", "distill.temperature", "student.train.lr")


@dataclass
class CalibrationConfig:
    """Fitted on the validation split after training and stored in each checkpoint's model.json."""

    # Binary data: the decision threshold maximizes balanced accuracy (= Youden's J); the rules
    # differ only in where inside the best interval it sits (see kdistill/calibration.py).
    threshold_rule: Literal["balanced_accuracy", "youden"] = "balanced_accuracy"
    temperature: bool = True  # temperature scaling of the logits (false: T = 1)


@dataclass
class ProfileConfig:
    threads: int = 2
    repeats: int = 20
    throughput_batch: int = 64


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    # A best.yaml written by ``kdistill tune``: its values replace the config file's (key=value
    # overrides still win), and the path stays in the resolved config as the record.
    tuned: Optional[str] = None
    seed: int = 0  # the teacher's seed, and the students' when ``seeds`` is null
    # Students (baseline and distilled) trained once per seed, e.g. [0, 1, 2], for mean +- std and
    # paired tests; checkpoints then go to <out>/seed<k>/<role>/. null: one seed (``seed``).
    seeds: Optional[list[int]] = None
    deterministic: bool = False
    # CPU threads for training; None = PyTorch's default (one per core). Fewer threads than
    # cores avoids oversubscription when other jobs share the machine.
    threads: Optional[int] = None
    # Training device (auto: CUDA when available) and number format: bf16/fp16 autocast (fp16 with
    # loss scaling, CUDA only; bf16 also on CPU). Evaluation and exported models stay float32.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    out: str = "runs/run"
    progress: bool = True
    export: bool = True  # write the distilled student as ONNX (+ int8) when onnxruntime is installed


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (optional), apply ``a.b=value`` overrides and validate everything."""
    raw: dict = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    parsed = [_parse_override(item) for item in overrides]
    for key, value in parsed:
        _set_dotted(raw, key, value)
    if raw.get("tuned"):
        for key, value in read_tuned(Path(str(raw["tuned"]))).items():
            _set_dotted(raw, key, value)
        for key, value in parsed:  # the command line has the last word
            _set_dotted(raw, key, value)
    return from_dict(raw)


def read_tuned(path: Path) -> dict[str, Any]:
    """The values of a ``kdistill tune`` best.yaml as ``{dotted key: value}``; only TUNED_KEYS."""
    flat = _flatten(_read_yaml(path))
    for key in flat:
        if key not in TUNED_KEYS:
            raise ConfigError(f"{path}: {key} is not a tuned value (allowed: {', '.join(TUNED_KEYS)})")
    return flat


def _flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def from_dict(raw: dict) -> Config:
    """Build a validated :class:`Config` from plain data; unknown keys are errors."""
    config = _build(Config, raw, prefix="")
    _check_consistency(config)
    return config


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


class _OverrideText(str):
    """The raw text of a ``key=value`` override; it is parsed once the key's type is known, so
    ``out=2024`` stays a string while ``student.train.epochs=5`` becomes an int."""


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. student.train.epochs=5")
    key, text = item.split("=", 1)
    return key.strip(), _OverrideText(text)


def _parse_text(value: _OverrideText, hint: Any) -> Any:
    if hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                       and str in typing.get_args(hint) and value not in ("null", "~", "")):
        return str(value)
    try:
        return yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        return str(value)


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name in names & set(raw):
        hint = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], key + ".")
        else:
            values[name] = _coerce(raw[name], hint, key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    if isinstance(value, _OverrideText):
        value = _parse_text(value, hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    expected = origin or hint
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {getattr(expected, '__name__', expected)}, got {value!r}")
    if expected is list and args:
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if expected is float and not math.isfinite(value):  # nan passes every < and > check below
        raise ConfigError(f"{key}: {value!r} must be a finite number")
    return value


def _check_consistency(config: Config) -> None:
    data = config.data
    if (data.root is None) == (data.dataset is None):
        raise ConfigError("data.root / data.dataset: set exactly one (a folder, or dataset: digits)")
    if data.input_size < 8:
        raise ConfigError(f"data.input_size: {data.input_size} is too small (minimum 8)")
    for key, value in (("data.val_fraction", data.val_fraction), ("data.test_fraction", data.test_fraction)):
        if not 0.0 < value < 0.5:
            raise ConfigError(f"{key}: {value} must be between 0 and 0.5")
    if not 0.0 <= config.distill.alpha <= 1.0:
        raise ConfigError(f"distill.alpha: {config.distill.alpha} must be between 0 and 1")
    if config.distill.temperature <= 0:
        raise ConfigError(f"distill.temperature: {config.distill.temperature} must be positive")
    for role, train in (("teacher", config.teacher.train), ("student", config.student.train)):
        if train.epochs < 1 or train.batch_size < 1 or train.lr <= 0:
            raise ConfigError(f"{role}.train: epochs, batch_size and lr must be positive")
        if train.weight_decay < 0:
            raise ConfigError(f"{role}.train.weight_decay: {train.weight_decay} must be 0 or more")
    counts = {"threads": config.threads, "profile.threads": config.profile.threads,
              "profile.repeats": config.profile.repeats,
              "profile.throughput_batch": config.profile.throughput_batch}
    for key, value in counts.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}: {value} must be at least 1")
    if config.seeds is not None and (not config.seeds or len(set(config.seeds)) != len(config.seeds)):
        raise ConfigError(f"seeds: {config.seeds} must be a non-empty list of different seeds (or null)")
    _check_tune_ranges(config.tune)


def _check_tune_ranges(tune: TuneConfig) -> None:
    for name in ("alpha", "temperature", "lr"):
        bounds = getattr(tune, name)
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise ConfigError(f"tune.{name}: {bounds} must be [low, high] with low <= high")
    if tune.alpha[0] < 0 or tune.alpha[1] > 1:
        raise ConfigError(f"tune.alpha: {tune.alpha} must lie within [0, 1]")
    for name in ("temperature", "lr"):
        if getattr(tune, name)[0] <= 0:
            raise ConfigError(f"tune.{name}: {getattr(tune, name)} must be positive (searched on a log scale)")
    if tune.trials < 1:
        raise ConfigError(f"tune.trials: {tune.trials} must be at least 1")
