"""kdistill: compress image classifiers by knowledge distillation, evaluated honestly."""

__version__ = "0.1.0"
