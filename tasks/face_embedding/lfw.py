"""The LFW verification protocol (pairs.txt, 10-fold accuracy, VAL@FAR) and identification top-k.

Scores are similarities: higher means "more likely the same person" (cosine of L2-normalised
embeddings, or a negated distance). Pairs are declared "same" when `score > threshold`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.common.io import write_text_atomic

MAX_DIGITS = 12  # an image number or count longer than this is garbage, not a count


class PairsFormatError(ValueError):
    """A malformed pairs file; the message names the file and line."""


@dataclass(frozen=True)
class Pair:
    """Two LFW images by person name and 1-based image number, and the fold the pair belongs to."""

    name1: str
    number1: int
    name2: str
    number2: int
    fold: int

    @property
    def is_same(self) -> bool:
        return self.name1 == self.name2

    def paths(self, root: str | os.PathLike, *, ext: str = "jpg") -> tuple[Path, Path]:
        root = Path(root)
        return (root / self.name1 / f"{self.name1}_{self.number1:04d}.{ext}",
                root / self.name2 / f"{self.name2}_{self.number2:04d}.{ext}")

    def line(self) -> str:
        if self.is_same:
            return f"{self.name1}\t{self.number1}\t{self.number2}"
        return f"{self.name1}\t{self.number1}\t{self.name2}\t{self.number2}"


def _number(token: str, path: Path, line_no: int) -> int:
    if not (token.isascii() and token.isdigit()) or len(token) > MAX_DIGITS or int(token) < 1:
        raise PairsFormatError(f"{path}:{line_no}: image number must be a positive integer, got {token!r}")
    return int(token)


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Parse a pairs file: header `<folds> <n>`, then per fold n matched and n mismatched lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise PairsFormatError(f"{path}:{line_no}: not UTF-8 text ({err.reason} at byte {err.start}); "
                               "re-encode the file as UTF-8") from None
    lines = [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1)]
    lines = [(no, fields) for no, fields in lines if fields]
    if not lines:
        raise PairsFormatError(f"{path}: empty pairs file")
    header_no, header = lines[0]
    if len(header) != 2 or not all(
        h.isascii() and h.isdigit() and len(h) <= MAX_DIGITS and int(h) > 0 for h in header
    ):
        raise PairsFormatError(f"{path}:{header_no}: header must be '<folds> <pairs per half>', got {header}")
    folds, per_half = int(header[0]), int(header[1])
    body = lines[1:]
    if len(body) != 2 * folds * per_half:
        raise PairsFormatError(f"{path}: header promises {folds} folds x 2 x {per_half} = "
                               f"{2 * folds * per_half} pairs, found {len(body)}")
    pairs = []
    for i, (no, fields) in enumerate(body):
        fold, matched = i // (2 * per_half), (i % (2 * per_half)) < per_half
        if matched:
            if len(fields) != 3:
                raise PairsFormatError(f"{path}:{no}: matched pair (fold {fold + 1}) must be 'name n1 n2', "
                                       f"got {len(fields)} fields")
            name1 = name2 = fields[0]
            number1, number2 = _number(fields[1], path, no), _number(fields[2], path, no)
        else:
            if len(fields) != 4:
                raise PairsFormatError(f"{path}:{no}: mismatched pair (fold {fold + 1}) must be "
                                       f"'name1 n1 name2 n2', got {len(fields)} fields")
            if fields[0] == fields[2]:
                raise PairsFormatError(f"{path}:{no}: mismatched pair names the same person {fields[0]!r}")
            name1, name2 = fields[0], fields[2]
            number1, number2 = _number(fields[1], path, no), _number(fields[3], path, no)
        pairs.append(Pair(name1, number1, name2, number2, fold))
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Sequence[Pair]) -> None:
    """Write pairs in LFW order; each fold must hold as many matched as mismatched pairs."""
    folds = sorted({p.fold for p in pairs})
    if folds != list(range(len(folds))):
        raise ValueError(f"folds must be numbered 0..n-1, got {folds}")
    per_fold = [[p for p in pairs if p.fold == f] for f in folds]
    per_half = sum(p.is_same for p in per_fold[0])
    lines = [f"{len(folds)}\t{per_half}"]
    for fold, members in zip(folds, per_fold, strict=True):
        same = [p for p in members if p.is_same]
        different = [p for p in members if not p.is_same]
        if len(same) != per_half or len(different) != per_half:
            raise ValueError(f"fold {fold}: {len(same)} matched / {len(different)} mismatched pairs, "
                             f"every fold needs {per_half} of each")
        lines += [p.line() for p in same + different]
    write_text_atomic(path, "\n".join(lines) + "\n")


def make_pairs(image_counts: Mapping[str, int], *, folds: int = 10, per_fold: int = 300,
               seed: int = 0) -> list[Pair]:
    """Draw `per_fold` matched and `per_fold` mismatched pairs per fold, LFW style.

    People are split across folds (as in LFW, nobody appears in two folds), so a threshold tuned
    on nine folds is tested on strangers. Pairs are distinct within a fold.
    """
    rng = random.Random(seed)
    names = sorted(image_counts)
    rng.shuffle(names)
    pairs: list[Pair] = []
    for fold in range(folds):
        people = names[fold::folds]
        repeat = [n for n in people if image_counts[n] >= 2]
        if len(people) < 2 or not repeat:
            raise ValueError(f"fold {fold}: needs >= 2 people and one with >= 2 images "
                             f"({len(names)} people over {folds} folds)")
        seen: set[tuple] = set()
        for want_same in (True, False):
            made, attempts = 0, 0
            while made < per_fold:
                attempts += 1
                if attempts > 100 * per_fold:
                    kind = "matched" if want_same else "mismatched"
                    raise ValueError(f"fold {fold}: cannot draw {per_fold} distinct {kind} pairs "
                                     f"from {len(people)} people")
                if want_same:
                    name1 = name2 = rng.choice(repeat)
                    n1, n2 = sorted(rng.sample(range(1, image_counts[name1] + 1), 2))
                else:
                    name1, name2 = sorted(rng.sample(people, 2))
                    n1, n2 = rng.randint(1, image_counts[name1]), rng.randint(1, image_counts[name2])
                key = (name1, n1, name2, n2)
                if key not in seen:
                    seen.add(key)
                    pairs.append(Pair(name1, n1, name2, n2, fold))
                    made += 1
    return pairs


