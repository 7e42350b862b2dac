"""Pure loss functions: tensors in, scalar out; they never read the config.

Every logit loss takes ``[B, K]`` student and teacher logits, treats the teacher as a fixed
target (detached), and returns a 0-d tensor averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Added to the product of norms in a Pearson correlation, as DIST's reference code does, so a
# constant vector (zero after centring) gives correlation 0 instead of 0/0.
PEARSON_EPS = 1e-8
# Added to the per-sample standard deviation in logit standardization, as the reference code does.
STANDARDIZE_EPS = 1e-7


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row over classes: ``(z - mean) / (unbiased std + 1e-7)``; ``[B, K] -> [B, K]``."""
    mean = logits.mean(dim=1, keepdim=True)  # (B, 1)
    std = logits.std(dim=1, keepdim=True)  # (B, 1), unbiased (divides by K - 1)
    return (logits - mean) / (std + STANDARDIZE_EPS)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            standardize: bool = False) -> torch.Tensor:
    """Hinton et al.'s distillation term: ``KL(softmax(t/T) || softmax(s/T)) * T**2``.

    The KL divergence is summed over classes and averaged over the batch ("batchmean"), which is
    the mathematical KL per example. The ``T**2`` factor keeps the gradient's scale independent of
    T, so ``alpha`` means the same thing at every temperature. Shapes: ``[B, K]`` each.

    ``standardize=True`` is logit standardization (Sun et al., CVPR 2024): both logit vectors are
    z-scored per sample (``standardize_logits``) before the same term, ``T**2`` included, so the
    student matches the teacher's logit relations, not their scale. The paper's recipe: base
    temperature 2, KD weight 9 (CE weight 0.1 on CIFAR-100, 1.0 on ImageNet).
    """
    teacher_logits = teacher_logits.detach()  # a fixed target
    if standardize:
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)  # (B, K)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def article_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The popular recipe's term as written: ``nn.KLDivLoss()`` (reduction "mean", which divides
    by batch x classes, not by batch) and no ``T**2`` factor. Kept only to compare against."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return torch.nn.KLDivLoss()(log_p_student, p_teacher)


def distillation_objective(ce: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * KD``."""
    return (1.0 - alpha) * ce + alpha * kd


def _target_and_rest_log_probs(logits: torch.Tensor, labels: torch.Tensor, temperature: float
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``log_softmax(logits / T)`` at the true class.

    Returns ``log [p_true, p_rest]`` as ``[B, 2]`` and the non-target logits / T as ``[B, K-1]``.
    """
    batch, classes = logits.shape
    scaled = logits / temperature  # (B, K)
    log_p = F.log_softmax(scaled, dim=1)  # (B, K)
    is_target = F.one_hot(labels, classes).bool()  # (B, K), one True per row
    log_p_true = log_p[is_target].view(batch, 1)  # (B, 1)
    # gathering the K-1 other entries, rather than pushing the target to -inf, keeps every
    # value finite, so the KL below never meets 0 * log 0
    log_p_others = log_p[~is_target].view(batch, classes - 1)  # (B, K-1)
    # log(1 - p_true) as a log-sum-exp of the others: exact even when p_true rounds to 1
    log_p_rest = torch.logsumexp(log_p_others, dim=1, keepdim=True)  # (B, 1)
    non_target_scaled = scaled[~is_target].view(batch, classes - 1)  # (B, K-1)
    return torch.cat([log_p_true, log_p_rest], dim=1), non_target_scaled


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``(alpha * TCKD + beta * NCKD) * T**2``, batch mean.

    TCKD is the KL between the binary [true class, all others] distributions (teacher || student);
    NCKD is the KL between the softmaxes over the K-1 non-target classes. Logits ``[B, K]``, labels
    ``[B]`` (class indices). With two classes NCKD is identically zero (one non-target class).
    The paper's CIFAR-100 defaults: alpha 1, beta 8, T 4, a 20-epoch linear warm-up of the term.
    """
    pair_s, others_s = _target_and_rest_log_probs(student_logits, labels, temperature)  # (B,2), (B,K-1)
    pair_t, others_t = _target_and_rest_log_probs(teacher_logits.detach(), labels, temperature)
    tckd = F.kl_div(pair_s, pair_t, reduction="batchmean", log_target=True)
    nckd = F.kl_div(F.log_softmax(others_s, dim=1), F.log_softmax(others_t, dim=1),
                    reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``[N, M] -> [N]``.

    The cosine of the centred rows, ``PEARSON_EPS`` added to the product of their norms.
    """
    a = a - a.mean(dim=1, keepdim=True)  # (N, M)
    b = b - b.mean(dim=1, keepdim=True)  # (N, M)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, gamma: float,
              temperature: float) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): match correlations of probabilities, not their values.

    With ``y = softmax(z / tau)`` (``[B, K]``): ``tau**2 * (beta * (1 - mean_i pearson(y_s[i], y_t[i]))
    + gamma * (1 - mean_c pearson(y_s[:, c], y_t[:, c])))``: the inter-class relation (each sample
    over its classes) and the intra-class relation (each class over the batch). The authors'
    defaults: beta = gamma = 1, loss weight 2 beside CE weight 1, tau 1 on ImageNet and 4 on
    CIFAR-100. The intra-class term needs a batch of two or more samples.
    """
    y_s = F.softmax(student_logits / temperature, dim=1)  # (B, K)
    y_t = F.softmax(teacher_logits.detach() / temperature, dim=1)  # (B, K)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()  # per sample, over classes
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()  # per class, over the batch: (K, B) rows
    return temperature**2 * (beta * inter + gamma * intra)


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, labeled: torch.Tensor, *,
                           weight: torch.Tensor | None = None, mix_lambda: torch.Tensor | None = None,
                           partner_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy ``[B, K] -> scalar`` over the rows where ``labeled`` holds (0, with the graph
    kept, when none does); a mixed view's target is its own label weighted by ``mix_lambda`` and its
    partner's by the rest. With every row labelled and unmixed it is exactly
    ``F.cross_entropy(logits, labels, weight)`` (per-class weights, weighted mean)."""
    labeled = labeled.to(logits.device)
    if mix_lambda is None and bool(labeled.all()):
        return F.cross_entropy(logits, labels, weight=weight)
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    rows = labeled.nonzero().flatten()
    target = F.one_hot(labels[rows], logits.shape[1]).float()  # [R, K]
    if mix_lambda is not None:
        lam = mix_lambda.to(logits.device)[rows, None]
        partner = F.one_hot(partner_labels.to(logits.device)[rows], logits.shape[1]).float()
        target = target * lam + partner * (1 - lam)
    if weight is not None:
        target = target * weight.view(1, -1)
    return -(target * F.log_softmax(logits[rows], 1)).sum() / target.sum()


def resize_map(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, *size]``: average pooling when shrinking (each output cell is the
    mean of the cells it covers), bilinear interpolation when growing."""
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    if features.shape[-2] >= size[0] and features.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(features, size)
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


def hint_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """FitNet's hint term (Romero et al., ICLR 2015): mean squared error between the regressed
    student map and the teacher's, both ``[B, C, H, W]`` (mean over every element)."""
    return F.mse_loss(student_map, teacher_map.detach())


def attention_map(features: torch.Tensor, size: tuple[int, int] | None = None, p: int = 2) -> torch.Tensor:
    """Spatial attention of a feature map (Zagoruyko & Komodakis, ICLR 2017): the channel mean of
    ``|A|**p``, optionally resized to ``size``, flattened and L2-normalized: ``[B, C, H, W] -> [B, H*W]``."""
    energy = features.abs().pow(p).mean(dim=1, keepdim=True)  # (B, 1, H, W)
    if size is not None:
        energy = resize_map(energy, size)
    return F.normalize(energy.flatten(1), dim=1)  # (B, H*W), unit L2 norm per sample


def attention_transfer_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor],
                            beta: float, p: int = 2) -> torch.Tensor:
    """AT: ``beta * sum_j mean((Q_s,j - Q_t,j)**2)`` over the layer pairs, as in the authors' code
    (the paper's Eq. 2 has beta / 2 with a norm, the code a mean and no half; beta 1000 is set for
    the code's form). Each student attention map is resized to its teacher's spatial size first;
    the authors pool the larger raw feature map instead, so maps of different sizes differ."""
    total = student_maps[0].new_zeros(())
    for student, teacher in zip(student_maps, teacher_maps):
        size = tuple(teacher.shape[-2:])
        total = total + (attention_map(student, size, p) - attention_map(teacher.detach(), None, p)).pow(2).mean()
    return beta * total


def _pairwise_distances(embedding: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``[B, D]``: ``[B, B]``, exactly 0 on the diagonal
    (the square root of a clamped square keeps the gradient finite there)."""
    squared = (embedding.unsqueeze(1) - embedding.unsqueeze(0)).pow(2).sum(-1)  # (B, B)
    distances = squared.clamp_min(1e-12).sqrt()
    return distances * (1 - torch.eye(len(embedding), device=embedding.device, dtype=embedding.dtype))


def _normalized_distances(embedding: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by their mean over the off-diagonal pairs (RKD's scale invariance)."""
    distances = _pairwise_distances(embedding)
    count = len(embedding) * (len(embedding) - 1)
    return distances / (distances.sum() / max(count, 1)).clamp_min(1e-12)


def _angles(embedding: torch.Tensor) -> torch.Tensor:
    """Cosines of the angle at every anchor j between the directions to i and k: ``[B, B, B]``."""
    directions = F.normalize(embedding.unsqueeze(0) - embedding.unsqueeze(1), dim=2)  # (B, B, D): j -> i
    return torch.bmm(directions, directions.transpose(1, 2))  # (B, B, B)


def rkd_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, distance_weight: float,
             angle_weight: float) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019): Huber (smooth L1) losses between the students' and
    the teacher's mean-normalized pairwise distances and between their triplet angles; embeddings
    ``[B, Ds]`` and ``[B, Dt]`` (the widths may differ: only relations are compared)."""
    student, teacher = student_embedding.flatten(1), teacher_embedding.detach().flatten(1)
    distance = F.smooth_l1_loss(_normalized_distances(student), _normalized_distances(teacher))
    angle = F.smooth_l1_loss(_angles(student), _angles(teacher))
    return distance_weight * distance + angle_weight * angle
