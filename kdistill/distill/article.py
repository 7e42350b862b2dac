"""The popular tutorial's objective reproduced as written, to compare against ``kd`` on your data.

It uses ``nn.KLDivLoss()`` with its default "mean" reduction (dividing by batch x classes, so with
2 classes the KD term is half the true KL), no ``T**2`` factor, and fixed ``T=1``, ``alpha=0.25``.
The config's alpha and temperature are ignored here on purpose. As in the tutorial, every row
needs its label and views are not mixed.
"""

from __future__ import annotations

from kdistill.distill.losses import article_kd_loss, distillation_objective
from kdistill.distill.method import DistillMethod
from kdistill.distill.registry import register

ARTICLE_ALPHA = 0.25
ARTICLE_TEMPERATURE = 1.0


@register("article")
class ArticleRecipe(DistillMethod):
    # shared = (): the recipe fixes its own alpha and T; distill.alpha and distill.temperature do not apply

    def forward(self, batch, student, teacher) -> dict:
        logits = student(batch.images)
        teacher_logits = teacher(batch)
        ce = self.cross_entropy(logits, batch)
        kd = article_kd_loss(logits, teacher_logits, ARTICLE_TEMPERATURE)
        loss = distillation_objective(ce, kd, ARTICLE_ALPHA)
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": logits.detach()}

    def record(self) -> dict:
        return {"alpha": ARTICLE_ALPHA, "temperature": ARTICLE_TEMPERATURE}
