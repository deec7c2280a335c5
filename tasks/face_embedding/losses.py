"""FaceNet's triplet loss with online semi-hard mining, an optional cosine-margin identity head, and the
embedding-distillation loss (Table 14)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pairwise_squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """|e_i - e_j|^2 for every pair, clamped at 0 against round-off (exactly 0 on the diagonal)."""
    squared_norms = (embeddings * embeddings).sum(dim=1)
    distances = squared_norms[:, None] - 2 * embeddings @ embeddings.T + squared_norms[None, :]
    return distances.clamp_min(0).fill_diagonal_(0)


def batch_semi_hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2
) -> tuple[torch.Tensor, int]:
    """Mean triplet loss over every anchor-positive pair of the batch, and how many were active (> 0).

    Follows `tfa.losses.triplet_semihard_loss` (the TF reference of FaceNet's mining), on squared L2
    distances of L2-normalised embeddings:
      * for anchor a and positive p, the negative is the *closest negative farther than p*
        (smallest d_an with d_an > d_ap). If it lies inside the margin it is FaceNet's semi-hard
        negative; if it lies beyond, the triplet costs nothing either way;
      * if no negative is farther than p (all are "hard"), the *farthest* negative of a is used, the
        gentlest of the hard ones, which avoids the collapse that hardest-negative mining causes;
      * loss = max(d_ap - d_an + margin, 0), averaged over all anchor-positive pairs (inactive ones
        included), as TF does. Anchors without a negative in the batch contribute no triplets.
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"want embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    distances = pairwise_squared_distances(F.normalize(embeddings, dim=1))
    same = labels[:, None] == labels[None, :]
    negative = ~same
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive &= negative.any(dim=1, keepdim=True)

    d_ap = distances[:, :, None]  # [anchor, positive, 1]
    d_an = distances[:, None, :]  # [anchor, 1, negative]
    farther = negative[:, None, :] & (d_an > d_ap)  # [anchor, positive, negative]
    inf = torch.tensor(float("inf"), dtype=distances.dtype, device=distances.device)
    closest_farther = torch.where(farther, d_an, inf).amin(dim=2)
    farthest = torch.where(negative, distances, -inf).amax(dim=1, keepdim=True)
    chosen = torch.where(farther.any(dim=2), closest_farther, farthest)

    losses = (distances - chosen + margin).clamp_min(0)[positive]
    if losses.numel() == 0:
        return embeddings.sum() * 0.0, 0  # keeps the graph (and DDP) intact on a degenerate batch
    return losses.mean(), int((losses > 0).sum())


def embedding_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between student and teacher embeddings, summed over dimensions and averaged
    over the batch: the paper's "minimise the squared difference" to FaceNet's output (Table 14).

    The teacher is detached; both are used as given (FaceNet's outputs are already L2-normalised,
    and normalising the student would hide a scale mismatch the student should learn)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    return (student - teacher.detach()).pow(2).sum(dim=1).mean()


class CosineMarginClassifier(nn.Module):
    """A CosFace head (Wang et al., 2018) over the training identities, used beside the triplet loss.

    Logits are `scale * (cos(e, w_c) - margin * [c == label])` with unit-length class weights, so the
    head pulls each embedding towards its identity's direction on the same sphere the triplet loss
    and the cosine-scored evaluation use. Every batch then pushes against *all* training identities,
    not only the P - 1 others in the batch, which is what makes short training runs generalise.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float = 30.0, margin: float = 0.35):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classification head needs at least 2 identities, got {num_classes}")
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosines = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T
        logits = self.scale * (cosines - self.margin * F.one_hot(labels, len(self.weight)))
        return F.cross_entropy(logits, labels)
