from __future__ import annotations

import math

import pytest
import torch

from tasks.face_embedding.losses import (
    CosineMarginClassifier,
    batch_semi_hard_triplet_loss,
    embedding_distillation_loss,
)


def unit(degrees: float, norm: float = 1.0) -> list[float]:
    return [norm * math.cos(math.radians(degrees)), norm * math.sin(math.radians(degrees))]


def d(delta_degrees: float) -> float:
    """Squared distance between two unit vectors `delta_degrees` apart."""
    return 2 - 2 * math.cos(math.radians(delta_degrees))


def test_semi_hard_miner_matches_hand_computed_example():
    # points on the unit circle (given at different norms: the loss must normalise them)
    # p0 at 0 deg and p1 at 50 deg are person 0; p2 at 80 deg and p3 at 175 deg are person 1.
    points = [unit(0, 2.0), unit(50, 0.5), unit(80, 3.0), unit(175, 1.0)]
    embeddings = torch.tensor(points, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    margin = 1.0
    # (a=0, p=1): d_ap = d(50); negatives of 0: d(80), d(175), both farther -> closest, d(80): semi-hard
    # (a=1, p=0): d_ap = d(50); negatives of 1: d(30) (hard, skipped), d(125) -> d(125): loss clamps to 0
    # (a=2, p=3): d_ap = d(95); negatives of 2: d(80), d(30), none farther -> farthest, d(80)
    # (a=3, p=2): d_ap = d(95); negatives of 3: d(175), d(125), both farther -> closest, d(125)
    expected_terms = [d(50) - d(80) + margin, 0.0, d(95) - d(80) + margin, d(95) - d(125) + margin]
    assert expected_terms[0] > 0 and expected_terms[2] > 0 and expected_terms[3] > 0
    assert d(50) - d(125) + margin < 0

    loss, active = batch_semi_hard_triplet_loss(embeddings, labels, margin=margin)

    assert active == 3
    assert loss.item() == pytest.approx(sum(expected_terms) / 4, abs=1e-9)


def reference_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[float, int]:
    """TF-addons semantics, one triplet at a time."""
    e = torch.nn.functional.normalize(embeddings, dim=1)
    dist = lambda i, j: float(((e[i] - e[j]) ** 2).sum())  # noqa: E731
    terms = []
    n = len(labels)
    for a in range(n):
        negatives = [dist(a, j) for j in range(n) if labels[j] != labels[a]]
        if not negatives:
            continue
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = dist(a, p)
            farther = [x for x in negatives if x > d_ap]
            d_an = min(farther) if farther else max(negatives)
            terms.append(max(d_ap - d_an + margin, 0.0))
    return sum(terms) / len(terms), sum(t > 0 for t in terms)


def test_miner_matches_triplet_by_triplet_reference_on_random_batch():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(24, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (24,), generator=generator)

    loss, active = batch_semi_hard_triplet_loss(embeddings, labels, margin=0.2)

    expected_loss, expected_active = reference_loss(embeddings, labels, 0.2)
    assert active == expected_active
    assert loss.item() == pytest.approx(expected_loss, abs=1e-9)


def test_loss_has_gradients_and_degenerate_batch_gives_zero():
    embeddings = torch.randn(8, 4, requires_grad=True)
    loss, _ = batch_semi_hard_triplet_loss(embeddings, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    loss.backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0

    single_person = torch.randn(4, 4, requires_grad=True)
    loss, active = batch_semi_hard_triplet_loss(single_person, torch.zeros(4, dtype=torch.long))
    assert (loss.item(), active) == (0.0, 0)
    loss.backward()  # still part of the graph
    assert torch.equal(single_person.grad, torch.zeros(4, 4))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="labels"):
        batch_semi_hard_triplet_loss(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


def test_distillation_loss_sums_dimensions_and_averages_batch():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    loss = embedding_distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(((1 + 4) + (9 + 16)) / 2)
    loss.backward()
    assert teacher.grad is None  # the teacher is a fixed target
    assert torch.allclose(student.grad, (student - teacher).detach())  # d/ds of sum (s-t)^2 / 2
    with pytest.raises(ValueError, match="shapes differ"):
        embedding_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_cosine_margin_head_matches_cosface_formula():
    torch.manual_seed(0)
    head = CosineMarginClassifier(4, 3, scale=10.0, margin=0.25)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 3.0]]))
    embeddings = torch.tensor([[1.0, 1.0, 0, 0], [0, 0, 0, -2.0]])
    labels = torch.tensor([1, 0])
    # cosines with unit class directions e0, e1, e3: row 0 -> (1/sqrt2, 1/sqrt2, 0); row 1 -> (0, 0, -1)
    c = 1 / math.sqrt(2)
    logits = [[10 * c, 10 * (c - 0.25), 0.0], [10 * (0 - 0.25), 0.0, -10.0]]
    losses = [
        math.log(sum(math.exp(v) for v in row)) - row[label]
        for row, label in zip(logits, [1, 0], strict=True)
    ]
    expected = sum(losses) / 2
    assert head(embeddings, labels).item() == pytest.approx(expected, rel=1e-5)


def test_cosine_margin_head_needs_two_identities():
    with pytest.raises(ValueError, match="at least 2"):
        CosineMarginClassifier(8, 1)
