"""Distillation methods (one small file each) over pure loss functions in ``losses.py``.

Every module of this folder is imported with the package, so a method file's ``@register`` runs
without being listed anywhere; ``inputs`` and ``method_runs`` read the whole run config (which
imports the registry) and are imported by their users instead."""

import importlib
import pkgutil

from kdistill.distill.losses import kd_loss
from kdistill.distill.registry import METHODS, build_method
from kdistill.distill.teacher import CachedTeacher, FeatureTeacher, HeadOnStoredFeatures, LiveTeacher, freeze

_READ_THE_RUN_CONFIG = {"inputs", "method_runs"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _READ_THE_RUN_CONFIG:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "CachedTeacher", "FeatureTeacher", "HeadOnStoredFeatures", "LiveTeacher", "build_method", "freeze",
           "kd_loss"]
