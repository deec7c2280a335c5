"""`mobilenets face-embedding {index,search,export-embeddings}`: a face gallery you can query.

    index   --gallery DIR --weights CKPT --out INDEX   embed DIR/<identity>/*.jpg into INDEX (appends)
    search  --index INDEX --query IMAGE [-k 5] [--save-grid PNG]
    (both, and `serve`: [--runtime torch|onnx|onnx-int8 [--model FILE.onnx]], embed on ONNX Runtime)
    export-embeddings --weights CKPT --out FILE.npz (--images DIR | --synthetic N)   a distillation teacher

An index is an `EmbeddingIndex` directory plus `embedder.json`, which records the weights it was
built with, their input size and the identity names, so `search` embeds the query with the same
network and prints names, not label numbers. Appending with other weights is refused: scores from
two embedders are not comparable.

`--runtime onnx|onnx-int8` embeds with the exported embedder (`mobilenets export --checkpoint`):
`--model FILE`, or without it the checkpoint exported beside the index (`INDEX-onnx/`,
`INDEX-onnx-int8/`, the place `serve` uses; re-exported on every call: pass `--model` to skip it). The index
keeps the weights it was built with either way: an int8 embedding is the same network's, within
quantization noise of the fp32 one, so PyTorch, fp32 and int8 queries search the same index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.common.deploy.runtime import RUNTIMES
from tasks.common.io import ImageReadError, read_image, write_text_atomic
from tasks.face_embedding.data import IdentityFolder, ImageList, KeyedSyntheticFaces, face_eval_transform
from tasks.face_embedding.index import KINDS, EmbeddingIndex, IndexFormatError
from tasks.face_embedding.inference import (
    NotAFaceImageError,
    embed_dataset,
    embed_images,
    export_embeddings,
    read_face_image,
)
from tasks.face_embedding.model import FaceEmbedder, load_embedder
from tasks.face_embedding.plots import save_match_grid

if TYPE_CHECKING:
    from tasks.common.deploy import OnnxModel

EMBEDDER_FILE = "embedder.json"


@dataclass
class IndexInfo:
    """What `search` needs besides the vectors: how to embed a query, and who each label is."""

    weights: str
    image_size: int
    embedding_dim: int
    identities: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, index_dir: Path) -> IndexInfo:
        path = index_dir / EMBEDDER_FILE
        if not path.is_file():
            raise IndexFormatError(
                f"{index_dir}: no {EMBEDDER_FILE}; build the index with `mobilenets face-embedding index`"
            )
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise IndexFormatError(f"{path}: not valid JSON ({err})") from None
        types = {"weights": str, "image_size": int, "embedding_dim": int, "identities": list}
        required = set(types) - {"identities"}
        if not isinstance(data, dict) or set(data) - set(types) or not required <= set(data):
            raise IndexFormatError(f"{path}: must be an object with keys {sorted(types)}, got {data!r:.200}")
        for key, value in data.items():
            if not isinstance(value, types[key]) or isinstance(value, bool):
                raise IndexFormatError(f"{path}: {key} must be {types[key].__name__}, got {value!r:.100}")
        if not all(isinstance(name, str) for name in data.get("identities", [])):
            raise IndexFormatError(f"{path}: identities must be a list of names")
        return cls(**data)

    def check_labels(self, index: EmbeddingIndex, index_dir: Path) -> None:
        """Every label of the index must name one of `identities`."""
        if len(index.labels) and int(index.labels.max()) >= len(self.identities):
            raise IndexFormatError(
                f"{index_dir / EMBEDDER_FILE}: names {len(self.identities)} identities, but "
                f"labels.npy uses label {int(index.labels.max())}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def save(self, index_dir: Path) -> None:
        write_text_atomic(index_dir / EMBEDDER_FILE, self.to_json())

    def label(self, name: str) -> int:
        if name not in self.identities:
            self.identities.append(name)
        return self.identities.index(name)


def deploy_embedder(
    model: FaceEmbedder,
    runtime: str,
    *,
    weights: str | os.PathLike,
    index_dir: str | os.PathLike,
    model_file: str | os.PathLike | None = None,
    embedding_dim: int,
    image_size: int,
) -> OnnxModel | None:
    """Make `model` embed on the runtime `--runtime` names (None: PyTorch, left as it is).

    The exported model is `model_file`, or `weights` exported beside the index; either must embed
    `embedding_dim`-D vectors at `image_size` px, as the index was built.
    """
    if runtime == "torch":
        if model_file is not None:
            raise ValueError(f"--model {model_file}: an exported model runs with --runtime onnx or onnx-int8")
        return None
    from tasks.common.deploy import load_runtime  # onnxruntime is the optional `deploy` extra
    from tasks.face_embedding.deploy import DEPLOYMENT

    index_dir = Path(index_dir)
    deployed = load_runtime(runtime, DEPLOYMENT, model=model_file, ckpt_path=weights,
                            out_dir=index_dir.with_name(f"{index_dir.name}-{runtime}"))  # fmt: skip
    found, wanted = (deployed.embedding_dim, deployed.image_size), (embedding_dim, image_size)
    if found != wanted:
        raise ValueError(f"{deployed.path}: embeds {found[0]}-D at {found[1]} px, but {index_dir} "
                         f"was built with {wanted[0]}-D at {wanted[1]} px")  # fmt: skip
    model.forward = deployed  # embed_dataset / embed_images call the module; its forward now runs ORT
    return deployed


def build_index(
    gallery: str | os.PathLike,
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    kind: str = "flat",
    batch_size: int = 128,
    num_workers: int = 0,
    runtime: str = "torch",
    model_file: str | os.PathLike | None = None,
) -> tuple[int, int]:
    """Embed `gallery/<identity>/*` into the index at `out` (created or appended to); (added, skipped)."""
    out, weights = Path(out), Path(weights).resolve()
    loaded = load_embedder(weights)
    if (out / EMBEDDER_FILE).exists():
        info, index = IndexInfo.load(out), EmbeddingIndex.load(out)
        info.check_labels(index, out)
        if Path(info.weights) != weights:
            raise ValueError(
                f"{out} was built with {info.weights}; embeddings of {weights} would not be "
                "comparable. Use those weights or a new --out"
            )
    else:
        info = IndexInfo(
            weights=str(weights), image_size=loaded.image_size, embedding_dim=loaded.model.embedding_dim
        )
        index = EmbeddingIndex(info.embedding_dim, kind=kind)
    deploy_embedder(loaded.model, runtime, weights=weights, index_dir=out, model_file=model_file,
                    embedding_dim=info.embedding_dim, image_size=info.image_size)  # fmt: skip
    folder = IdentityFolder(gallery)  # lists <identity>/<image> files; decoding happens below
    root = folder.root.resolve()
    keys = [path.resolve().relative_to(root).as_posix() for path in folder.paths]
    labels = [info.label(folder.identities[label]) for label in folder.labels]
    images = ImageList(root, keys, labels, transform=face_eval_transform(info.image_size), skip_corrupt=True)
    embedded = embed_dataset(
        loaded.model, images, batch_size=batch_size, num_workers=num_workers, desc=f"indexing {gallery}"
    )
    if len(embedded.keys):
        index.add(embedded.embeddings, embedded.labels, [str(root / key) for key in embedded.keys])
    index.save(out)
    info.save(out)
    return len(embedded.keys), len(images) - len(embedded.keys)


@dataclass
class Match:
    rank: int
    score: float
    identity: str
    path: str | None


def search_index(
    index_dir: str | os.PathLike,
    query: str | os.PathLike,
    *,
    k: int = 5,
    runtime: str = "torch",
    model_file: str | os.PathLike | None = None,
) -> list[Match]:
    index_dir = Path(index_dir)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    info, index = IndexInfo.load(index_dir), EmbeddingIndex.load(index_dir)
    info.check_labels(index, index_dir)
    image = read_face_image(query)
    loaded = load_embedder(info.weights, image_size=info.image_size)
    deploy_embedder(loaded.model, runtime, weights=info.weights, index_dir=index_dir, model_file=model_file,
                    embedding_dim=info.embedding_dim, image_size=info.image_size)  # fmt: skip
    scores, labels, paths = index.search(embed_images(loaded.model, [image], image_size=info.image_size), k)
    return [
        Match(rank + 1, float(score), info.identities[label], paths[0][rank] if paths else None)
        for rank, (score, label) in enumerate(zip(scores[0], labels[0], strict=True))
        if label >= 0
    ]


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """`--runtime` and `--model`, as `index`, `search` and `serve` take them."""
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="embed with PyTorch, or on ONNX Runtime (fp32 or int8)")  # fmt: skip
    parser.add_argument("--model", help="an exported embedder (`mobilenets export --checkpoint`); without "
                        "it, --runtime onnx* exports the checkpoint beside the index first")  # fmt: skip


def main_index(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mobilenets face-embedding index", description=build_index.__doc__)
    parser.add_argument("--gallery", required=True, help="folder of <identity>/<image> files")
    parser.add_argument("--weights", required=True, help="face-embedding checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="index directory (created, or appended to)")
    parser.add_argument("--kind", choices=KINDS, default="flat", help="FAISS index type of a new index")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    try:
        added, skipped = build_index(
            args.gallery,
            args.weights,
            args.out,
            kind=args.kind,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            runtime=args.runtime,
            model_file=args.model,
        )
    except (IndexFormatError, ValueError, FileNotFoundError) as err:  # bad --model: DeployError
        print(f"mobilenets face-embedding index: {err}", file=sys.stderr)
        return 2
    total = len(EmbeddingIndex.load(args.out))
    print(f"added {added} images to {args.out} ({total} in all); skipped {skipped} unreadable")
    return 0


def main_search(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilenets face-embedding search",
        description="Nearest gallery faces to a query image, by cosine similarity.",
    )
    parser.add_argument("--index", required=True, help="directory written by `index`")
    parser.add_argument("--query", required=True, help="a face crop (>= 32 px, aspect ratio <= 2:1)")
    parser.add_argument("-k", type=int, default=5, help="matches to show")
    parser.add_argument("--save-grid", help="PNG with the query and its matches")
    add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"-k must be at least 1 (matches to show), got {args.k}")
    try:
        matches = search_index(args.index, args.query, k=args.k, runtime=args.runtime, model_file=args.model)
    except (ImageReadError, NotAFaceImageError, IndexFormatError, ValueError, FileNotFoundError) as err:
        print(f"mobilenets face-embedding search: {err}", file=sys.stderr)
        return 2
    for match in matches:
        print(f"{match.rank:>3}  {match.score:+.4f}  {match.identity}  {match.path or ''}")
    if args.save_grid:
        rows = [
            (
                read_image(args.query),
                "query",
                [
                    (read_image(m.path) if m.path else None, f"{m.identity}\n{m.score:+.3f}", None)
                    for m in matches
                ],
            )
        ]
        save_match_grid(args.save_grid, rows)
        print(f"wrote {args.save_grid}")
    return 0


def main_export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilenets face-embedding export-embeddings",
        description="Write a teacher file (.npz of paths and embeddings) for "
        "`teacher: {kind: outputs, file: ...}`.",
    )
    parser.add_argument("--weights", required=True, help="the teacher's face-embedding checkpoint")
    parser.add_argument("--out", required=True, help=".npz to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of <identity>/<image> files (keys: paths relative to it)")
    source.add_argument(
        "--synthetic", type=int, metavar="N", help="the first N synthetic training identities"
    )
    parser.add_argument("--images-per-identity", type=int, default=40, help="with --synthetic")
    parser.add_argument("--seed", type=int, default=0, help="with --synthetic")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    loaded = load_embedder(args.weights)
    if args.synthetic:
        dataset = KeyedSyntheticFaces(
            args.synthetic, args.images_per_identity, size=loaded.image_size, seed=args.seed
        )
    else:
        folder = IdentityFolder(args.images)
        keys = [path.relative_to(folder.root).as_posix() for path in folder.paths]
        dataset = ImageList(
            folder.root,
            keys,
            folder.labels,
            transform=face_eval_transform(loaded.image_size),
            skip_corrupt=True,
        )
    rows = export_embeddings(loaded.model, dataset, args.out, batch_size=args.batch_size)
    print(f"wrote {rows} teacher embeddings ({loaded.model.embedding_dim}-D) to {args.out}")
    return 0
