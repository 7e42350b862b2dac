"""The popular tutorial's objective reproduced as written, to compare against ``kd`` on your data.

It uses ``nn.KLDivLoss()`` with its default "mean" reduction (dividing by batch x classes, so with
2 classes the KD term is half the true KL), no ``T**2`` factor, and fixed ``T=1``, ``alpha=0.25``.
The config's alpha and temperature are ignored here on purpose.
"""

from __future__ import annotations

import torch.nn.functional as F

from kdistill.distill.losses import article_kd_loss, distillation_objective
from kdistill.distill.registry import register

ARTICLE_ALPHA = 0.25
ARTICLE_TEMPERATURE = 1.0


@register("article")
class ArticleRecipe:
    needs_teacher = True
    shared = ()  # fixes its own alpha and T: distill.alpha and distill.temperature do not apply

    def __init__(self, alpha: float = ARTICLE_ALPHA, temperature: float = ARTICLE_TEMPERATURE,
                 class_weights=None):
        del alpha, temperature  # the recipe fixes both
        self.alpha, self.temperature = ARTICLE_ALPHA, ARTICLE_TEMPERATURE
        self.class_weights = class_weights

    def __call__(self, batch, student, teacher) -> dict:
        logits = student(batch.images)
        teacher_logits = teacher(batch)
        ce = F.cross_entropy(logits, batch.labels, weight=self.class_weights)
        kd = article_kd_loss(logits, teacher_logits, self.temperature)
        loss = distillation_objective(ce, kd, self.alpha)
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": logits.detach()}
