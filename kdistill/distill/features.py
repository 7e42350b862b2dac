"""What the feature methods (FitNet, AT, RKD) share: layer paths for student and teacher (given in
``distill.params.<method>``, or found by kdistill/distill/hooks.py), bound once to the two models
before training; each step the student's outputs are captured by hooks during its own forward and
the teacher's by a :class:`~kdistill.distill.teacher.FeatureTeacher`, or, for a method that reads
only the teacher's pooled embedding (:class:`EmbeddingMethod`), from a table computed once per
(image, view) (:class:`~kdistill.distill.teacher.StoredEmbeddingTeacher`).

Cost: with feature maps the teacher runs live every step (no table could hold them), so an epoch
costs a teacher forward per image on top of the student's step; with stored embeddings it costs
about what kd costs (docs/performance.md)."""

from __future__ import annotations

from typing import Any

import torch

from kdistill.distill.hooks import capture, default_layers, embedding_path, probe
from kdistill.distill.method import DistillMethod
from kdistill.errors import ConfigError


class FeatureMethod(DistillMethod):
    """``ce_weight * CE(s, y) + weight * feature_loss(student outputs, teacher outputs)``."""

    needs = frozenset({"features"})
    takes_unlabeled = takes_mixed = True  # the feature terms read no label
    layer_keys = ("student_layers", "teacher_layers")

    def __init__(self, class_weights=None, **params: Any):
        super().__init__(class_weights, **params)
        self.student_paths: list[str] = []
        self.teacher_paths: list[str] = []

    def bind(self, student: torch.nn.Module, teacher, example: torch.Tensor) -> None:
        """Choose the layers (configured, or the defaults for each model) and build what depends on
        their shapes; ``example`` is one input ``[1, C, S, S]``."""
        self.student_paths, self.teacher_paths = self.choose_layers(student, teacher.model, example)
        key = f"distill.params.{self.name}"
        student_out = probe(student, self.student_paths, example) if self.student_paths else {}
        teacher_out = probe(teacher.model, self.teacher_paths, example) if self.teacher_paths else {}
        if set(student_out) != set(self.student_paths) or set(teacher_out) != set(self.teacher_paths):
            raise ConfigError(f"{key}: a named layer did not run in the model's forward")
        self.build(student_out, teacher_out)

    def choose_layers(self, student, teacher_model, example) -> tuple[list[str], list[str]]:
        student_paths = self.params["student_layers"] or default_layers(student, example)
        teacher_paths = self.params["teacher_layers"] or default_layers(teacher_model, example)
        # Pair each student layer with one of the teacher's deepest layers, in order.
        pairs = min(len(student_paths), len(teacher_paths))
        return student_paths[-pairs:], teacher_paths[-pairs:]

    def build(self, student_out: dict, teacher_out: dict) -> None:
        """Connectors sized from one forward's outputs (none by default)."""

    def forward(self, batch, student, teacher) -> dict:
        if not self.teacher_paths:
            raise RuntimeError(f"{self.name}: bind(student, teacher, example) must run before training")
        with capture(student, self.student_paths) as student_out:
            logits = student(batch.images)  # [B, K]
        _, teacher_out = teacher.features(batch, self.teacher_paths)
        ce = self.cross_entropy(logits, batch)
        term = self.feature_loss([student_out[p] for p in self.student_paths],
                                 [teacher_out[p] for p in self.teacher_paths])
        loss = self.params["ce_weight"] * ce + term
        return {"loss": loss, "ce": ce.detach(), self.name: term.detach(), "logits": logits.detach()}

    def feature_loss(self, student_outs: list[torch.Tensor], teacher_outs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        return {"params": dict(self.params), "student_layers": self.student_paths,
                "teacher_layers": self.teacher_paths}


class EmbeddingMethod(FeatureMethod):
    """A feature method on the penultimate embedding (the classifier head's input) by default.
    That embedding is small (one vector per view), so with ``distill.teacher_cache`` it is stored
    per (image, view) like the logits and the teacher does not run in training; a configured
    ``teacher_embedding`` layer runs the teacher live."""

    needs = frozenset({"features", "embedding"})
    layer_keys = ("student_embedding", "teacher_embedding")

    def choose_layers(self, student, teacher_model, example) -> tuple[list[str], list[str]]:
        return ([self.params["student_embedding"] or embedding_path(student)],
                [self.params["teacher_embedding"] or embedding_path(teacher_model)])

    @classmethod
    def check(cls, params: dict[str, Any], key: str) -> None:
        for name in cls.layer_keys:
            if params[name] is not None and not isinstance(params[name], str):
                raise ConfigError(f"{key}.{name}: expected a module path (text) or null, got {params[name]!r}")
        super().check({k: v for k, v in params.items() if k not in cls.layer_keys}, key)
