"""The training objective: the recipe's loss terms on one batch.

Every active term is returned by name (``loss_ce``, ``loss_sce``, ``loss_triplet``,
``loss_arcface``, ``loss_cr``, ``loss_mt``, ``loss_aux``), already multiplied by its
weight, so the terms add up to the loss that is back-propagated and logged as
``train_loss``.

- ``loss_ce`` / ``loss_sce``: cross-entropy (or symmetric CE) against the soft
  targets: smoothed one-hots, mixed by CutMix/Mixup.
- ``loss_triplet``: batch-hard triplet on the L2-normalized embedding; ``loss_arcface``: the
  ArcFace margin loss. Both need one class per sample and use the *dominant* label
  of a mixed sample (:func:`fastvip.methods.mix.dominant_labels`).
- ``loss_cr``: Contrastive Regularization on the softmax outputs, positives by the
  Jensen-Shannon distance of the soft targets (two views of an image share theirs).
- ``loss_mt``: Mean Teacher consistency KL(student || teacher), ramped up: the student on
  one view of an image against the teacher on its other view (``teacher_logits`` come
  paired that way, see :func:`fastvip.train.other_view`).
- ``loss_aux``: the classification loss on the auxiliary head.
- ``loss_distill``: with ``teachers``, ``w T^2 KL(teachers || model)`` on the same augmented batch
  (the teachers' probabilities at temperature T averaged), every other term scaled by ``1 - w``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastvip.methods import losses
from fastvip.recipe import Recipe


def classification(recipe: Recipe, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if recipe.loss == "sce":
        return losses.symmetric_cross_entropy(logits, targets, alpha=recipe.sce_alpha, beta=recipe.sce_beta)
    return losses.soft_cross_entropy(logits, targets)


def loss_terms(recipe: Recipe, out: dict, targets: torch.Tensor, dominant: torch.Tensor, *,
               teacher_logits: torch.Tensor | None = None, mt_ramp: float = 1.0,
               distill_p: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The weighted loss terms for one batch (see the module docstring)."""
    logits = out["logits"].float()
    terms = {f"loss_{recipe.loss}": classification(recipe, logits, targets)}
    if recipe.triplet_weight > 0:
        # On the L2-normalized embedding: on raw pooled features the loss is cheaper to lower by
        # shrinking every embedding towards zero than by separating classes (measured: a stage-2
        # run on the tiny-vipriors proxy collapsed to chance, loss_triplet pinned at the margin).
        terms["loss_triplet"] = recipe.triplet_weight * losses.batch_hard_triplet(
            out["embedding"].float(), dominant, margin=recipe.triplet_margin or None, normalize=True)
    if recipe.arcface:
        margin_logits = losses.arcface_logits(out["cosine"], dominant, s=recipe.arcface_scale,
                                              m=recipe.arcface_margin)
        terms["loss_arcface"] = recipe.arcface_weight * F.cross_entropy(margin_logits, dominant)
    if recipe.cr_weight > 0:
        terms["loss_cr"] = recipe.cr_weight * losses.contrastive_regularization(
            logits.softmax(dim=1), targets, tau=recipe.cr_tau, delta=recipe.cr_delta)
    if recipe.mt_weight > 0 and teacher_logits is not None:
        terms["loss_mt"] = recipe.mt_weight * mt_ramp * losses.consistency_kl(logits, teacher_logits.float())
    if recipe.aux_weight > 0:
        terms["loss_aux"] = recipe.aux_weight * classification(recipe, out["aux"].float(), targets)
    if distill_p is not None:
        w = recipe.distill_weight
        terms = {k: (1 - w) * v for k, v in terms.items()}
        terms["loss_distill"] = w * losses.distillation_kl(logits, distill_p, recipe.distill_temperature)
    return terms
