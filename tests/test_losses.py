"""fastvip.methods.losses: small hand-checkable cases, CPU only."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastvip.methods.losses import (
    arcface_logits,
    batch_hard_pairs,
    batch_hard_triplet,
    consistency_kl,
    contrastive_regularization,
    cr_positive_mask,
    js_divergence,
    rampup,
    smooth_targets,
    soft_cross_entropy,
    symmetric_cross_entropy,
)

LN2 = math.log(2.0)


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


def js_hand(p, q):
    """Jensen-Shannon divergence of two plain-Python distributions, 0 log 0 = 0."""
    out = 0.0
    for a, b in zip(p, q):
        m = (a + b) / 2
        if a > 0:
            out += 0.5 * a * math.log(a / m)
        if b > 0:
            out += 0.5 * b * math.log(b / m)
    return out


# ----------------------------------------------------------------------------- cross entropy


def test_smooth_targets_values():
    t = smooth_targets(torch.tensor([2, 0]), 4, 0.2)
    assert t.dtype == torch.float32 and t.shape == (2, 4)
    assert torch.allclose(t[0], torch.tensor([0.05, 0.05, 0.85, 0.05]))
    assert torch.allclose(t[1], torch.tensor([0.85, 0.05, 0.05, 0.05]))
    assert torch.allclose(t.sum(1), torch.ones(2))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_soft_cross_entropy_matches_torch_label_smoothing(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=g) * 3
    labels = torch.randint(0, 7, (16,), generator=g)
    ours = soft_cross_entropy(logits, smooth_targets(labels, 7, eps))
    ref = F.cross_entropy(logits, labels, label_smoothing=eps)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_soft_cross_entropy_two_class_by_hand():
    # logits (2, 0), label 0, eps 0.2 -> targets (0.9, 0.1)
    # -0.9 log p0 - 0.1 log p1 = 0.9 L + 0.1 (2 + L), L = ln(1 + e^-2)  => L + 0.2
    by_hand = math.log(1 + math.exp(-2)) + 0.2  # 0.326928...
    logits = torch.tensor([[2.0, 0.0]])
    loss = soft_cross_entropy(logits, smooth_targets(torch.tensor([0]), 2, 0.2))
    assert close(loss, by_hand) and close(by_hand, 0.3269280110)


def test_soft_cross_entropy_mixed_targets_are_linear():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, generator=g)
    a, b = torch.randint(0, 5, (8,), generator=g), torch.randint(0, 5, (8,), generator=g)
    ta, tb = smooth_targets(a, 5, 0.1), smooth_targets(b, 5, 0.1)
    lam = 0.3
    mixed = soft_cross_entropy(logits, lam * ta + (1 - lam) * tb)
    ref = (lam * F.cross_entropy(logits, a, label_smoothing=0.1)
           + (1 - lam) * F.cross_entropy(logits, b, label_smoothing=0.1))
    assert torch.allclose(mixed, ref, atol=1e-6)


def test_soft_cross_entropy_half_precision_input_computes_in_float32():
    logits = torch.tensor([[2.0, 0.0]], dtype=torch.bfloat16)
    loss = soft_cross_entropy(logits, smooth_targets(torch.tensor([0]), 2, 0.2))
    assert loss.dtype == torch.float32


# ----------------------------------------------------------------------------- triplet

# points on a line (second coordinate 0), labels 0,0,1,1,2,2
X = [0.0, 3.0, 1.0, 7.0, 4.0, 11.0]
Y = [0, 0, 1, 1, 2, 2]
# by hand: anchor -> (hardest positive, d_ap), (hardest negative, d_an)
#   0 (x=0):  pos 1 d=3   neg 2 (x=1) d=1
#   1 (x=3):  pos 0 d=3   neg 4 (x=4) d=1
#   2 (x=1):  pos 3 d=6   neg 0 (x=0) d=1
#   3 (x=7):  pos 2 d=6   neg 4 (x=4) d=3
#   4 (x=4):  pos 5 d=7   neg 1 (x=3) d=1
#   5 (x=11): pos 4 d=7   neg 3 (x=7) d=4
POS = [1, 0, 3, 2, 5, 4]
NEG = [2, 4, 0, 4, 1, 3]
GAPS = [3 - 1, 3 - 1, 6 - 1, 6 - 3, 7 - 1, 7 - 4]  # d_ap - d_an


def _emb(xs):
    return torch.tensor([[x, 0.0] for x in xs])


def test_batch_hard_pairs_by_hand():
    pos, neg, valid = batch_hard_pairs(_emb(X), torch.tensor(Y))
    assert pos.tolist() == POS and neg.tolist() == NEG and valid.tolist() == [True] * 6


def test_batch_hard_triplet_value_by_hand():
    loss = batch_hard_triplet(_emb(X), torch.tensor(Y), margin=0.3)
    by_hand = (2.3 + 2.3 + 5.3 + 3.3 + 6.3 + 3.3) / 6  # = 3.8
    assert close(by_hand, sum(g + 0.3 for g in GAPS) / 6)
    assert close(loss, 3.8)
    # a margin that makes some hinges inactive: relu(gap - 4) = 0,0,1,0,2,0
    assert close(batch_hard_triplet(_emb(X), torch.tensor(Y), margin=-4.0), 3 / 6)


def test_batch_hard_triplet_soft_margin_by_hand():
    loss = batch_hard_triplet(_emb(X), torch.tensor(Y), margin=None)
    by_hand = sum(math.log1p(math.exp(g)) for g in GAPS) / 6
    assert close(loss, by_hand)


def test_batch_hard_anchor_without_positive_is_excluded_and_ignored_label_unused():
    # x=20 label 3 has no positive: not an anchor (its only effect could be as a negative,
    # and it is nobody's nearest). x=3.5 label -1 would be the nearest negative of anchors
    # 1 and 4 if it were used.
    xs, ys = X + [20.0, 3.5], Y + [3, -1]
    pos, neg, valid = batch_hard_pairs(_emb(xs), torch.tensor(ys))
    assert valid.tolist() == [True] * 6 + [False, False]
    assert pos.tolist() == POS + [-1, -1] and neg.tolist()[:6] == NEG and neg[7] == -1
    assert close(batch_hard_triplet(_emb(xs), torch.tensor(ys), margin=0.3), 3.8)


def test_batch_hard_no_valid_anchor_gives_connected_zero():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = batch_hard_triplet(emb, torch.tensor([1, 1, 1, 1]))
    assert float(loss.detach()) == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros(4, 3))


def test_batch_hard_gradient_finite_with_coincident_embeddings():
    # d_ap = 0 (anchor 0/1 coincide, same label) and d_an = 0 (anchor 2 coincides with 0/1)
    emb = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for margin, normalize in [(0.3, False), (None, False), (0.3, True)]:
        emb.grad = None
        loss = batch_hard_triplet(emb, labels, margin=margin, normalize=normalize)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
        assert emb.grad.abs().sum() > 0


def test_batch_hard_gradient_matches_hand_derivative():
    # anchor 0 (x=0): d_ap = |x1 - x0|, d_an = |x2 - x0| -> d loss / d x1 = 1/6 from anchor 0 ...
    emb = _emb(X).requires_grad_(True)
    batch_hard_triplet(emb, torch.tensor(Y), margin=0.3).backward()
    # hand: each active triplet (a, p, n) adds +(x_a - x_p)/|..| - (x_a - x_n)/|..| to x_a,
    # -(x_a - x_p)/|..| to x_p, +(x_a - x_n)/|..| to x_n, all / 6
    g = [0.0] * 6
    for a in range(6):
        p, n = POS[a], NEG[a]
        sp = math.copysign(1, X[a] - X[p])
        sn = math.copysign(1, X[a] - X[n])
        g[a] += (sp - sn) / 6
        g[p] -= sp / 6
        g[n] += sn / 6
    assert torch.allclose(emb.grad[:, 0], torch.tensor(g), atol=1e-6)


# ----------------------------------------------------------------------------- ArcFace


def test_arcface_logits_by_hand():
    s, m = 30.0, 0.5
    cos = torch.tensor([[0.5, 0.2, -0.3],
                        [0.1, -0.95, 0.4],     # target cos -0.95 < cos(pi - m) = -0.8776
                        [0.3, 0.6, 0.9]])
    labels = torch.tensor([0, 1, -1])
    out = arcface_logits(cos, labels, s=s, m=m)
    assert out.dtype == torch.float32
    # row 0, target: theta = pi/3, theta + m < pi -> s cos(theta + m)
    theta = math.acos(0.5)
    assert theta + m < math.pi
    assert close(out[0, 0], s * math.cos(theta + m))
    assert close(out[0, 0], 30 * 0.5 - 30 * (0.5 - math.cos(math.pi / 3 + 0.5)))  # the drop
    assert out[0, 0] < 30 * 0.5
    # row 1, target: theta + m > pi -> fallback s (cos - m sin(pi - m))
    assert math.acos(-0.95) + m > math.pi and -0.95 <= math.cos(math.pi - m)
    assert close(out[1, 1], s * (-0.95 - m * math.sin(math.pi - m)))
    # non-target logits and the ignored row: plain s cos
    nontarget = torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    assert torch.allclose(out[nontarget], (s * cos)[nontarget])


def test_arcface_margin_monotone_and_half_precision():
    # the target logit decreases with theta everywhere (both branches), no NaN at +-1
    c = torch.linspace(-1, 1, 2001)
    out = arcface_logits(c[:, None].half(), torch.zeros(2001, dtype=torch.long), s=1.0, m=0.5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    diffs = out[1:, 0] - out[:-1, 0]
    assert (diffs >= -1e-3).all()
    c = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], requires_grad=True)
    arcface_logits(c, torch.tensor([0, 0])).sum().backward()
    assert torch.isfinite(c.grad).all()


# ----------------------------------------------------------------------------- SCE


def test_sce_one_hot_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])   # p = (0.25, 0.75)
    t = torch.tensor([[0.0, 1.0]])
    ce, rce = -math.log(0.75), 4.0 * (1 - 0.75)     # RCE = -A (1 - p_y), A = -4
    assert close(symmetric_cross_entropy(logits, t, alpha=0.1, beta=1.0, A=-4.0), 0.1 * ce + rce)
    assert close(symmetric_cross_entropy(logits, t), ce + rce)  # report: H(p,q) + H(q,p)
    assert close(symmetric_cross_entropy(logits, t, alpha=0.0, beta=1.0, A=-6.0), 6 * 0.25)


def test_sce_soft_targets_by_hand_and_finite():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    p = torch.softmax(logits, 1)[0].tolist()
    t = torch.tensor([[0.7, 0.3, 0.0]])  # a mixed label; 0 -> log clamped to A
    ce = -(0.7 * math.log(p[0]) + 0.3 * math.log(p[1]))
    rce = -(p[0] * math.log(0.7) + p[1] * math.log(0.3) + p[2] * -4.0)
    assert close(symmetric_cross_entropy(logits, t, alpha=0.5, beta=2.0), 0.5 * ce + 2 * rce)

    g = torch.Generator().manual_seed(2)
    x = (torch.randn(8, 10, generator=g) * 10).requires_grad_(True)
    a, b = torch.randint(0, 10, (8,), generator=g), torch.randint(0, 10, (8,), generator=g)
    soft = 0.6 * smooth_targets(a, 10, 0.1) + 0.4 * smooth_targets(b, 10, 0.1)
    loss = symmetric_cross_entropy(x, soft)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- JS divergence


def test_js_divergence_properties():
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(5, 6, generator=g) * 2, 1)
    q = torch.softmax(torch.randn(3, 6, generator=g) * 2, 1)
    pq, qp = js_divergence(p, q), js_divergence(q, p)
    assert pq.shape == (5, 3)
    assert torch.allclose(pq, qp.t(), atol=1e-7)
    assert torch.equal(torch.diagonal(js_divergence(p, p)), torch.zeros(5))
    assert (pq >= 0).all() and (pq <= LN2 + 1e-6).all()
    for i in range(5):
        for j in range(3):
            assert close(pq[i, j], js_hand(p[i].tolist(), q[j].tolist()), 1e-5)
    # chunked evaluation gives the same matrix
    assert torch.allclose(js_divergence(p, q, chunk_elems=7), pq, atol=1e-7)


def test_js_divergence_one_hots_and_zeros():
    e = torch.eye(3)
    js = js_divergence(e, e)
    assert torch.allclose(js, LN2 * (1 - torch.eye(3)), atol=1e-6)
    p = torch.tensor([[1.0, 0.0]])
    q = torch.tensor([[0.5, 0.5]])
    by_hand = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2))
    assert close(js_divergence(p, q)[0, 0], by_hand)
    # all-zero entries: no NaN in value or gradient
    z = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    out = js_divergence(z, z)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- CR

# two views each of three images, C = 3:
#   A mixed (class 0: 0.7, class 1: 0.3), B mixed (0: 0.6, 1: 0.4) -> same classes, other lambda
#   C mixed (2: 0.8, 0: 0.2)
LAB = [[0.7, 0.3, 0.0], [0.7, 0.3, 0.0],
       [0.6, 0.4, 0.0], [0.6, 0.4, 0.0],
       [0.2, 0.0, 0.8], [0.2, 0.0, 0.8]]


def test_cr_positive_mask_by_hand():
    js_ab = js_hand(LAB[0], LAB[2])            # ~0.0055
    js_ac = js_hand(LAB[0], LAB[4])
    assert 1e-3 < js_ab < 1e-2 < js_ac
    labels = torch.tensor(LAB)
    small = cr_positive_mask(labels, 1e-3)
    instance = [(0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4)]
    assert small.dtype == torch.bool
    assert sorted(map(tuple, small.nonzero().tolist())) == sorted(instance)
    larger = cr_positive_mask(labels, 1e-2)
    cls = instance + [(i, j) for i in range(4) for j in range(4) if i // 2 != j // 2]
    assert sorted(map(tuple, larger.nonzero().tolist())) == sorted(cls)
    # strict "<" (report: dis < delta); never self
    assert not cr_positive_mask(labels, 0.0).any()
    assert not torch.diagonal(cr_positive_mask(labels, 10.0)).any()


def cr_hand(probs, labels, tau, delta, normalize=False):
    """Contrastive Regularization with plain Python loops."""
    if normalize:
        probs = [[x / math.sqrt(sum(y * y for y in o)) for x in o] for o in probs]
    n = len(probs)

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    losses = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and js_hand(labels[i], labels[j]) < delta]
        if not pos:
            continue
        den = sum(math.exp(dot(probs[i], probs[a]) / tau) for a in range(n) if a != i)
        losses.append(-sum(math.log(math.exp(dot(probs[i], probs[p]) / tau) / den)
                           for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_contrastive_regularization_tiny_case_by_hand():
    probs = [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]
    labels = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    for tau, normalize in [(0.1, False), (0.5, False), (0.1, True)]:
        ours = contrastive_regularization(torch.tensor(probs), torch.tensor(labels),
                                          tau=tau, delta=1e-3, normalize=normalize)
        assert close(ours, cr_hand(probs, labels, tau, 1e-3, normalize), 1e-5)
    # the report's default: no L2 normalisation, and it matters here
    assert not close(contrastive_regularization(torch.tensor(probs), torch.tensor(labels)),
                     cr_hand(probs, labels, 0.1, 1e-3, normalize=True), 1e-3)


def test_contrastive_regularization_anchor_without_positive_excluded():
    probs = [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]
    labels = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    ours = contrastive_regularization(torch.tensor(probs), torch.tensor(labels), tau=0.2)
    by_hand = cr_hand(probs, labels, 0.2, 1e-3)
    assert close(ours, by_hand, 1e-5)
    # and it is not the mean over all four anchors (anchors 2, 3 would add terms)
    dot = [[sum(a * b for a, b in zip(x, y)) for y in probs] for x in probs]
    two = [-math.log(math.exp(dot[i][1 - i] / 0.2)
                     / sum(math.exp(dot[i][a] / 0.2) for a in range(4) if a != i)) for i in (0, 1)]
    assert close(ours, sum(two) / 2, 1e-5)


def test_contrastive_regularization_matching_views_lower():
    g = torch.Generator().manual_seed(4)
    n, c = 6, 6
    base = torch.softmax(torch.randn(n, c, generator=g) * 4, 1)
    view2 = torch.softmax(base.log() + 0.05 * torch.randn(n, c, generator=g), 1)
    labels = torch.eye(c)[torch.arange(n)]
    # image k's two views get the same soft label; rows: v1 of all images, then v2
    soft = torch.cat([labels, labels])
    matching = contrastive_regularization(torch.cat([base, view2]), soft)
    mismatched = contrastive_regularization(torch.cat([base, view2.roll(1, 0)]), soft)
    assert matching < mismatched


def test_contrastive_regularization_no_positive_gives_connected_zero():
    probs = torch.softmax(torch.randn(3, 3), 1).requires_grad_(True)
    loss = contrastive_regularization(probs, torch.eye(3))
    assert float(loss.detach()) == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(probs.grad, torch.zeros(3, 3))


def test_contrastive_regularization_gradient_reaches_logits():
    logits = torch.randn(4, 3, requires_grad=True)
    soft = torch.tensor(LAB[:4])
    contrastive_regularization(torch.softmax(logits, 1), soft).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Mean Teacher


def test_consistency_kl_formula_and_kl_div_form():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(4, 5, generator=g) * 2
    t = torch.randn(4, 5, generator=g) * 2
    ps, pt = torch.softmax(s, 1), torch.softmax(t, 1)
    explicit = (ps * (ps.log() - pt.log())).sum(1).mean()
    ours = consistency_kl(s, t)
    assert torch.allclose(ours, explicit, atol=1e-6)
    # KL(student || teacher) = F.kl_div(log p_t, p_s, "batchmean"): student is the target
    assert torch.allclose(ours, F.kl_div(pt.log(), ps, reduction="batchmean"), atol=1e-6)
    # and it is not the other direction
    other = F.kl_div(ps.log(), pt, reduction="batchmean")
    assert not torch.allclose(ours, other, atol=1e-3)
    # by hand on one 2-class row: p_s = (0.25, 0.75), p_t = (0.5, 0.5)
    hand = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert close(consistency_kl(torch.tensor([[0.0, math.log(3)]]), torch.zeros(1, 2)), hand)
    # temperature divides both logit sets
    pst, ptt = torch.softmax(s / 2, 1), torch.softmax(t / 2, 1)
    assert torch.allclose(consistency_kl(s, t, temperature=2.0),
                          (pst * (pst.log() - ptt.log())).sum(1).mean(), atol=1e-6)


def test_consistency_kl_zero_when_equal_and_no_teacher_gradient():
    s = torch.randn(3, 4)
    assert abs(float(consistency_kl(s, s.clone()))) < 1e-6
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    consistency_kl(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- ramp-up


def test_rampup_endpoints():
    assert rampup(0, 10) == pytest.approx(math.exp(-5))
    assert rampup(-4, 10) == pytest.approx(math.exp(-5))
    assert rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert rampup(10, 10) == 1.0
    assert rampup(25, 10) == 1.0
    assert rampup(3, 0) == 1.0 and rampup(0, -1) == 1.0
    assert isinstance(rampup(3, 10), float)
