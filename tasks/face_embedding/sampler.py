"""P x K batches: P people with K photos each, what online triplet mining needs in every batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Batches of `p` identities x `k` images each, for online triplet mining.

    Each epoch shuffles the identities (seeded by `seed + epoch`, so every rank agrees) and deals them
    out in turn to the ranks, so ranks see disjoint people within a step and no triplet is split
    across processes. An identity with fewer than `k` images is sampled with replacement. Every
    rank yields the same number of batches (`len(self)`), as DDP requires; by default one epoch
    visits each identity once, `batches_per_epoch` sets it freely (identities are then reshuffled
    as often as needed).

    Look-alike batches (`similar_identities` = g > 1): random people are soon told apart by coarse
    cues (hair, skin), so semi-hard negatives stop asking for the fine ones (eye spacing, moles)
    that separate unseen look-alikes. Once `set_identity_centroids` has been given the model's
    mean embedding of each identity, a batch is p / g random people each joined by its g - 1
    nearest not yet in the batch (doppelganger mining). Ranks then may share a person in a step.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        batches_per_epoch: int | None = None,
        similar_identities: int = 1,
    ) -> None:
        if p < 2 or k < 2:
            raise ValueError(f"triplets need p >= 2 identities and k >= 2 images each, got p={p}, k={k}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if similar_identities < 1 or p % similar_identities:
            raise ValueError(f"similar_identities={similar_identities} must divide p={p}")
        labels = np.asarray(labels)
        self.identities, inverse = np.unique(labels, return_inverse=True)
        self.members = [np.flatnonzero(inverse == i) for i in range(len(self.identities))]
        if len(self.identities) < p * num_replicas:
            raise ValueError(f"{len(self.identities)} identities cannot fill p={p} x {num_replicas} replicas")
        self.p, self.k, self.seed = p, k, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.batches_per_epoch = batches_per_epoch or len(self.identities) // (p * num_replicas)
        self.similar_identities = similar_identities
        self.look_alikes: np.ndarray | None = None  # per identity: the others, nearest first
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_identity_centroids(self, centroids: np.ndarray) -> None:
        """Rows: unit mean embedding of each of `self.identities`, in that order."""
        if centroids.shape[0] != len(self.identities):
            raise ValueError(f"{centroids.shape[0]} centroids for {len(self.identities)} identities")
        similarity = centroids @ centroids.T
        np.fill_diagonal(similarity, -np.inf)
        nearest = min(len(self.identities) - 1, 2 * self.p)
        candidates = np.argpartition(-similarity, nearest - 1, axis=1)[:, :nearest]
        order = np.argsort(-np.take_along_axis(similarity, candidates, axis=1), axis=1, kind="stable")
        self.look_alikes = np.take_along_axis(candidates, order, axis=1)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        order_rng = np.random.default_rng([self.seed, self.epoch])  # identical on every rank
        image_rng = np.random.default_rng([self.seed, self.epoch, 1 + self.rank])
        step = self.p * self.num_replicas
        rounds_per_shuffle = len(self.identities) // step
        for batch in range(self.batches_per_epoch):
            if batch % rounds_per_shuffle == 0:
                order = order_rng.permutation(len(self.identities))
            start = (batch % rounds_per_shuffle) * step + self.rank * self.p
            people = order[start:start + self.p]
            if self.look_alikes is not None and self.similar_identities > 1:
                people = self._with_look_alikes(people)
            indices = []
            for identity in people:
                members = self.members[identity]
                indices += image_rng.choice(members, self.k, replace=len(members) < self.k).tolist()
            yield indices

    def _with_look_alikes(self, people: np.ndarray) -> list[int]:
        """The first p / g of `people`, each followed by its g - 1 nearest identities not yet taken."""
        seeds = people[: self.p // self.similar_identities]
        chosen, used = [], set(seeds.tolist())
        for seed in seeds:
            # 2p candidates (or everybody) minus < p people used always leave g - 1
            others = [i for i in self.look_alikes[seed] if i not in used][: self.similar_identities - 1]
            chosen += [seed, *others]
            used.update(others)
        return chosen
