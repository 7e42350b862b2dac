"""When a threshold or temperature fitted on the validation split rests on too few images to
trust: fewer than ``MIN_FIT_IMAGES`` in all, or fewer than ``MIN_FIT_PER_CLASS`` of one class.

With a handful of validation images a temperature can run off (every prediction right leaves
nothing to bound it; one confident mistake pulls it far) and a threshold lands in a wide gap
between few scores. ``run`` warns in its log and report, and ``kdistill doctor`` flags a folder
whose carved validation split would be this small, before anything trains.
"""

from __future__ import annotations

MIN_FIT_IMAGES = 50
MIN_FIT_PER_CLASS = 10


def fitted_on_validation(temperature: bool, threshold_rule: str, binary: bool) -> list[str]:
    """What a run fits on the validation split (``calibration.temperature``,
    ``calibration.threshold_rule``): the prior and arg-max rules fit no threshold."""
    fitted = ["temperature"] if temperature else []
    if binary and threshold_rule not in ("prior", "argmax"):
        fitted.append("threshold")
    return fitted


def small_fit_warning(class_counts: dict[str, int], fitted: list[str]) -> str | None:
    """A one-line warning when ``fitted`` (e.g. ``["temperature", "threshold"]``) rest on a
    validation split of these per-class counts that is too small; None when it is large enough."""
    total = sum(class_counts.values())
    scarce = [name for name, count in class_counts.items() if count < MIN_FIT_PER_CLASS]
    if not fitted or (total >= MIN_FIT_IMAGES and not scarce):
        return None
    counts = " / ".join(f"{name} {count}" for name, count in class_counts.items())
    reasons = [f"fewer than {MIN_FIT_IMAGES} images"] if total < MIN_FIT_IMAGES else []
    reasons += [f"fewer than {MIN_FIT_PER_CLASS} of {', '.join(scarce)}"] if scarce else []
    return (f"{' and '.join(fitted)} fitted on {total} validation images ({counts}): "
            f"{' and '.join(reasons)}, too few to trust; a larger val/ folder or data.val_fraction helps")
