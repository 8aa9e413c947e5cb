"""Loss functions of the two VIPriors reports, as pure functions on tensors.

* DeepBlueAI 2020: cross entropy with label smoothing, batch-hard triplet loss
  (Hermans et al. 2017), ArcFace logits (Deng et al. 2019).
* "Attract-repulse" 2021: Symmetric Cross Entropy (Wang et al. 2019), Contrastive
  Regularization on the softmax outputs (SupCon form, positives chosen by the
  Jensen-Shannon divergence of the mixed soft labels) and the Mean Teacher
  consistency KL(student || teacher) with the usual sigmoid ramp-up.

Everything is computed in float32 (float64 inputs stay float64) whatever the autocast
dtype of the inputs, and reduces to a scalar mean over the batch unless stated.
Soft targets are (N, C) rows that sum to 1: a smoothed one-hot from
:func:`smooth_targets`, or a linear mix of two of them (CutMix / Mixup), so label
smoothing composes with mixing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "arcface_logits",
    "batch_hard_pairs",
    "batch_hard_triplet",
    "consistency_kl",
    "contrastive_regularization",
    "cr_positive_mask",
    "js_divergence",
    "rampup",
    "smooth_targets",
    "soft_cross_entropy",
    "symmetric_cross_entropy",
]

_TINY = 1e-30  # log() floor: x * log(max(x, _TINY)) is 0 at x = 0, value and gradient finite


def _f32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32, or float64 when it already is (never downcast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# --------------------------------------------------------------------------- cross entropy


def smooth_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot ``labels`` (N,) smoothed as ``F.cross_entropy(label_smoothing=smoothing)`` does.

    ``target = (1 - smoothing) * onehot + smoothing / num_classes`` -> float32 (N, C).
    """
    onehot = F.one_hot(labels.long(), num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i -sum_c targets[i, c] * log_softmax(logits)[i, c]`` (cross entropy H(t, p)).

    With ``targets = smooth_targets(labels, C, eps)`` this equals
    ``F.cross_entropy(logits, labels, label_smoothing=eps)``.
    """
    logp = F.log_softmax(_f32(logits), dim=-1)
    return -(_f32(targets) * logp).sum(dim=-1).mean()


# --------------------------------------------------------------------------- batch-hard triplet


def _pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix (N, N) with a zero diagonal and finite gradients everywhere.

    Uses ``|a|^2 + |b|^2 - 2 a.b`` (no N x N x D tensor), clamped at 1e-12 before the square
    root: a (near-)coincident pair gets distance 1e-6 and, because ``clamp`` passes no
    gradient below its bound, a zero instead of an infinite / NaN gradient.
    """
    sq = (emb * emb).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (emb @ emb.t())
    d = d2.clamp(min=1e-12).sqrt()
    eye = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    return d.masked_fill(eye, 0.0)


def _hard_pairs(dist: torch.Tensor, labels: torch.Tensor):
    labels = labels.reshape(-1)
    known = labels >= 0
    same = labels[:, None] == labels[None, :]
    both = known[:, None] & known[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & both & ~eye
    neg_mask = ~same & both
    d = dist.detach()
    pos = d.masked_fill(~pos_mask, float("-inf")).argmax(dim=1)
    neg = d.masked_fill(~neg_mask, float("inf")).argmin(dim=1)
    has_pos, has_neg = pos_mask.any(dim=1), neg_mask.any(dim=1)
    valid = has_pos & has_neg
    pos = torch.where(has_pos, pos, torch.full_like(pos, -1))
    neg = torch.where(has_neg, neg, torch.full_like(neg, -1))
    return pos, neg, valid


def batch_hard_pairs(embeddings: torch.Tensor, labels: torch.Tensor, normalize: bool = False):
    """The pairs :func:`batch_hard_triplet` uses: ``(pos_index, neg_index, valid_mask)``.

    For anchor ``i``: ``pos_index[i]`` is the same-label sample ``j != i`` farthest from it
    (Euclidean), ``neg_index[i]`` the different-label sample closest to it (first index on a
    tie); -1 where there is none. ``valid_mask[i]`` says that both exist. Samples with a
    negative label (ignored / unknown) are neither anchors, positives nor negatives.
    """
    with torch.no_grad():
        emb = _f32(embeddings)
        if normalize:
            emb = F.normalize(emb, dim=1)
        return _hard_pairs(_pairwise_distances(emb), labels)


def batch_hard_triplet(embeddings: torch.Tensor, labels: torch.Tensor,
                       margin: float | None = 0.3, normalize: bool = False) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In defense of the triplet loss").

    ``mean_i relu(d(i, hardest positive) - d(i, hardest negative) + margin)`` over the anchors
    that have at least one positive and one negative (see :func:`batch_hard_pairs`);
    ``softplus(d_ap - d_an)`` instead when ``margin is None`` (their soft margin).
    ``normalize`` L2-normalises the embeddings first. With no valid anchor the result is a
    zero still connected to ``embeddings`` (so backward and DDP see the parameters).
    The DeepBlueAI report gives no margin; 0.3 is the common re-id default.
    """
    emb = _f32(embeddings)
    if normalize:
        emb = F.normalize(emb, dim=1)
    dist = _pairwise_distances(emb)
    pos, neg, valid = _hard_pairs(dist, labels)
    # masked mean over the valid anchors: no host read of how many there are (a training step
    # must not wait on the GPU); with none, a zero still connected to ``embeddings``
    d_ap = dist.gather(1, pos.clamp(min=0)[:, None]).squeeze(1)
    d_an = dist.gather(1, neg.clamp(min=0)[:, None]).squeeze(1)
    per = F.softplus(d_ap - d_an) if margin is None else F.relu(d_ap - d_an + margin)
    weight = valid.to(per.dtype)
    return (per * weight).sum() / weight.sum().clamp(min=1.0)


# --------------------------------------------------------------------------- ArcFace


def arcface_logits(cosine: torch.Tensor, labels: torch.Tensor,
                   s: float = 30.0, m: float = 0.5) -> torch.Tensor:
    """ArcFace additive angular margin (Deng et al. 2019) applied to cosine logits (N, C).

    Target class: ``s * cos(theta + m)``, ``theta = arccos(cos)``, computed as
    ``cos*cos(m) - sin*sin(m)`` with ``cos`` clamped to ``[-1+1e-7, 1-1e-7]`` first. As in the
    reference insightface / arcface-pytorch code (``easy_margin=False``), where
    ``cos <= th = cos(pi - m)`` (i.e. ``theta + m >= pi``, where ``cos(theta + m)`` would stop
    decreasing) the target logit is ``s * (cos - mm)`` with ``mm = sin(pi - m) * m`` instead.
    Other classes, and every class of a sample whose label is < 0, get ``s * cos``.
    Returns float32 logits to feed to (soft) cross entropy.
    """
    cos = _f32(cosine)
    c = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    sin = (1.0 - c * c).sqrt()
    phi = c * math.cos(m) - sin * math.sin(m)
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    phi = torch.where(cos > th, phi, cos - mm)
    labels = labels.reshape(-1).long()
    target = torch.zeros_like(cos, dtype=torch.bool)
    target.scatter_(1, labels.clamp(min=0)[:, None], True)
    target &= (labels >= 0)[:, None]
    return torch.where(target, phi, cos) * s


# --------------------------------------------------------------------------- SCE


def symmetric_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                            alpha: float = 1.0, beta: float = 1.0, A: float = -4.0) -> torch.Tensor:
    """Symmetric Cross Entropy (Wang et al. 2019): ``alpha * CE + beta * RCE``, batch mean.

    ``CE = -sum_c t_c log p_c`` (as :func:`soft_cross_entropy`) and the reverse cross entropy
    ``RCE = -sum_c p_c log t_c`` with ``log 0`` replaced by ``A``: implemented as
    ``log(clamp(t, min=exp(A)))``, which is the same as clamping ``log t`` at ``A`` (every
    target below ``exp(A)`` counts as ``A``). With one-hot targets ``RCE = -A * (1 - p_y)``.
    Works for soft (mixed and/or smoothed) targets; note that a smoothed off-target entry
    ``eps / C`` is below ``exp(-4) ~ 0.018`` for ImageNet-sized C and so also counts as ``A``.

    Defaults: the 2021 report writes ``L_SCE = H(p, q) + H(q, p)`` (Sec. 2.3), i.e. unweighted,
    ``alpha = beta = 1``; ``A = -4`` is the SCE paper's. (The SCE paper's own CIFAR-10 setting
    is ``alpha = 0.1, beta = 1.0``.)
    """
    t = _f32(targets)
    logp = F.log_softmax(_f32(logits), dim=-1)
    ce = -(t * logp).sum(dim=-1)
    rce = -(logp.exp() * t.clamp(min=math.exp(A)).log()).sum(dim=-1)
    return (alpha * ce + beta * rce).mean()


# --------------------------------------------------------------------------- JS / CR


def js_divergence(p: torch.Tensor, q: torch.Tensor, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """Pairwise Jensen-Shannon divergence (natural log) between rows of p (N, C) and q (M, C).

    ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, in ``[0, ln 2]``;
    ``0 log 0 = 0`` (logs are taken of ``max(x, 1e-30)``, so no NaN/inf, and identical rows give
    exactly 0). Returns (N, M). Rows are processed in chunks of about ``chunk_elems`` elements
    of the (rows, M, C) intermediate to bound memory.
    """
    dtype = torch.promote_types(torch.promote_types(p.dtype, q.dtype), torch.float32)
    p, q = p.to(dtype), q.to(dtype)
    lp, lq = p.clamp(min=_TINY).log(), q.clamp(min=_TINY).log()
    rows = max(1, chunk_elems // max(1, q.shape[0] * q.shape[1]))
    out = []
    for i in range(0, p.shape[0], rows):
        pc, lpc = p[i:i + rows, None, :], lp[i:i + rows, None, :]
        mix = 0.5 * (pc + q[None])
        lm = mix.clamp(min=_TINY).log()
        js = 0.5 * (pc * (lpc - lm)).sum(-1) + 0.5 * (q[None] * (lq[None] - lm)).sum(-1)
        out.append(js)
    if not out:
        return p.new_zeros((0, q.shape[0]))
    return torch.cat(out).clamp(min=0.0)


def cr_positive_mask(soft_labels: torch.Tensor, delta: float) -> torch.Tensor:
    """Positives of Contrastive Regularization: ``P'(i) = {j != i : JS(y_i, y_j) < delta}``.

    Strict ``<`` as the 2021 report writes it (Sec. 2.1), so ``delta = 0`` gives no positive.
    Two views that got the same mix (same partner and lambda) share an identical soft label
    (JS exactly 0), so a small ``delta`` gives instance positives (plus unmixed same-class
    samples, whose smoothed one-hots are identical too); a larger one adds samples of the
    same classes mixed with a different lambda / partner (class-wise contrasting).
    """
    with torch.no_grad():
        js = js_divergence(soft_labels, soft_labels)
        eye = torch.eye(len(js), dtype=torch.bool, device=js.device)
        return (js < delta) & ~eye


def contrastive_regularization(probs: torch.Tensor, soft_labels: torch.Tensor,
                               tau: float = 0.1, delta: float = 1e-3,
                               normalize: bool = False) -> torch.Tensor:
    """Contrastive Regularization of the 2021 report (Sec. 2.1): SupCon on the softmax outputs.

    ``L_i = -1/|P'(i)| sum_{p in P'(i)} log( exp(o_i.o_p / tau) / sum_{a != i} exp(o_i.o_a / tau) )``
    with ``o`` the softmax probability vectors of the (multi-view) batch and ``P'`` from
    :func:`cr_positive_mask` (JS divergence of the soft labels ``< delta``).

    Following the report, ``o`` is used as is, NOT L2-normalised: the report "changes the
    feature z_l to the softmax output o_l" and writes the plain dot product ``o_i . o_p``
    (``normalize=True`` L2-normalises first, as SupCon does with its projections).
    Deviations / choices: the report sums over anchors; this returns the mean over the
    anchors that have at least one positive (SupCon reference code; a constant rescale,
    absorbed by the loss weight). Anchors without a positive are excluded; with none at all
    the result is ``probs.sum() * 0``. The report states no tau or delta: tau = 0.1 is SupCon's,
    delta = 1e-3 is our "small delta": identical mixes, or the same class pair with
    |d lambda| below ~0.045 (lambda = 0.5) to ~0.03 (lambda = 0.9).
    """
    o = _f32(probs)
    if normalize:
        o = F.normalize(o, dim=1)
    pos = cr_positive_mask(soft_labels, delta)
    n_pos = pos.sum(dim=1)
    anchors = (n_pos > 0).to(o.dtype)
    sim = (o @ o.t()) / tau
    eye = torch.eye(len(o), dtype=torch.bool, device=o.device)
    log_den = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    log_prob = sim - log_den
    # masked mean over the anchors (no host read); with none, a zero connected to ``probs``
    per_anchor = -(log_prob * pos).sum(dim=1) / n_pos.clamp(min=1)
    return (per_anchor * anchors).sum() / anchors.sum().clamp(min=1.0)


# --------------------------------------------------------------------------- Mean Teacher


def consistency_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Mean Teacher consistency as the 2021 report writes it: ``E_x[KL(f(x, θ) || f(x, θ'))]``.

    ``KL(student || teacher) = mean_i sum_c p_s (log p_s - log p_t)``, ``p = softmax(z / T)``,
    teacher side detached (gradient reaches the student only). Note the direction: the
    student is the *first* argument (reverse / mode-seeking KL, not the distillation
    KL(teacher || student)). In ``F.kl_div(input, target)`` = ``sum target * (log target - input)``
    terms this is ``F.kl_div(log p_t, p_s, reduction="batchmean")``: the student is the
    ``target``, the teacher's log-probabilities the ``input``. No ``T**2`` factor.
    """
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=-1)
    log_pt = F.log_softmax(_f32(teacher_logits.detach()) / temperature, dim=-1)
    return (log_ps.exp() * (log_ps - log_pt)).sum(dim=-1).mean()


def teacher_probs(teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """The teachers' averaged probabilities at temperature T: ``mean_k softmax(z_k / T)`` (float32)."""
    return torch.stack([F.softmax(_f32(z) / temperature, dim=-1) for z in teacher_logits]).mean(0)


def distillation_kl(student_logits: torch.Tensor, teacher_p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation term ``T^2 KL(p_t || p_s)``, ``p_s = softmax(z_s / T)``, batch mean.

    The teacher is the target (forward KL, unlike :func:`consistency_kl`); the ``T^2`` keeps the
    gradient's size independent of T. ``teacher_p``: probabilities (:func:`teacher_probs`)."""
    log_ps = F.log_softmax(_f32(student_logits) / temperature, dim=-1)
    p_t = teacher_p.detach().float()
    kl = (p_t * (torch.log(p_t.clamp_min(1e-12)) - log_ps)).sum(-1).mean()
    return temperature ** 2 * kl


def rampup(step: int, rampup_steps: int) -> float:
    """Sigmoid-shaped ramp ``exp(-5 (1 - t)^2)``, ``t = clamp(step / rampup_steps, 0, 1)``.

    From Laine & Aila (2017) / Tarvainen & Valpola (2017, Mean Teacher) for the consistency
    weight; 1.0 when ``rampup_steps <= 0``. (It starts at exp(-5) ~ 0.0067, not 0.)
    """
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
