"""Evaluation: inference over a split, metrics with bootstrap intervals, calibration."""
