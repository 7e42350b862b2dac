"""Distillation methods (one small file each) over pure loss functions in ``losses.py``."""

from kdistill.distill import article, at, ce, dist, dkd, fitnet, kd, ls, rkd  # noqa: F401  (registers the methods)
from kdistill.distill.losses import kd_loss
from kdistill.distill.registry import METHODS, build_method
from kdistill.distill.teacher import CachedTeacher, FeatureTeacher, HeadOnStoredFeatures, LiveTeacher, freeze

__all__ = ["METHODS", "CachedTeacher", "FeatureTeacher", "HeadOnStoredFeatures", "LiveTeacher", "build_method", "freeze",
           "kd_loss"]
