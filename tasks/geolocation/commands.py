"""`mobilenets geolocation <tool>`: partition, evaluate, shards, synth, baselines, profile."""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.geolocation.metrics import METRIC_KEYS, geo_metrics, great_circle_km


def _column_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id-column", help="default: IMG_ID (MP-16 style) or id (OSV-5M), from the header")
    parser.add_argument("--lat-column", help="default: LAT or latitude")
    parser.add_argument("--lon-column", help="default: LON or longitude")
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count bad rows instead of failing"
    )


def _read(parser: argparse.ArgumentParser, path: str, args: argparse.Namespace):
    from tasks.geolocation.data import read_photo_csv

    try:
        return read_photo_csv(
            path,
            id_column=args.id_column,
            lat_column=args.lat_column,
            lon_column=args.lon_column,
            skip_bad_rows=args.skip_bad_rows,
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))


def _outputs_for(out: Sequence[str], t_max: Sequence[int]) -> list[Path]:
    if len(out) == len(t_max):
        return [Path(o) for o in out]
    if len(out) == 1:
        base = Path(out[0])
        return [base.with_name(f"{base.stem}_t{t}{base.suffix or '.csv'}") for t in t_max]
    raise ValueError(f"give one --out per --t-max ({len(t_max)}) or a single one to suffix, got {len(out)}")


def main_partition(argv: Sequence[str]) -> int:
    """PlaNet's adaptive S2 partition of a photo CSV into cells.csv (one per --t-max)."""
    parser = argparse.ArgumentParser(
        prog="mobilenets geolocation partition",
        description="Split S2 cells while they hold more than t_max photos, then drop those under t_min.",
    )
    parser.add_argument(
        "--csv", required=True, help="photo CSV (IMG_ID,LAT,LON or OSV-5M's id,latitude,longitude)"
    )
    parser.add_argument(
        "--out",
        required=True,
        nargs="+",
        help="cells.csv (several t_max: one each, or one name that gets a _t<N> suffix per partition)",
    )
    parser.add_argument(
        "--t-max", type=int, nargs="+", required=True, help="split cells above this many photos"
    )
    parser.add_argument("--t-min", type=int, required=True, help="drop cells below this many photos")
    parser.add_argument(
        "--min-level", type=int, default=0, help="start from cells of this level (0: cube faces)"
    )
    parser.add_argument("--max-level", type=int, default=30, help="never split cells of this level")
    parser.add_argument("--plot", action="store_true", help="also draw each partition on the map (<out>.png)")
    _column_options(parser)
    args = parser.parse_args(argv)
    from tasks.geolocation.cells import leaf_cell_ids, partition, write_cells_csv

    try:
        outputs = _outputs_for(args.out, args.t_max)
    except ValueError as err:
        parser.error(str(err))
    table = _read(parser, args.csv, args)
    if table.skipped:
        print(f"{args.csv}: skipped {table.skipped} bad rows")
    start = time.perf_counter()
    leaves = leaf_cell_ids(table.lat, table.lon)
    leaf_seconds = time.perf_counter() - start
    print(f"{len(table)} photos: S2 leaf cells in {leaf_seconds:.1f} s")
    for t_max, out in zip(args.t_max, outputs, strict=True):
        start = time.perf_counter()
        try:
            part, _ = partition(
                leaves,
                table.lat,
                table.lon,
                t_max=t_max,
                t_min=args.t_min,
                min_level=args.min_level,
                max_level=args.max_level,
            )
        except ValueError as err:
            parser.error(str(err))
        seconds = time.perf_counter() - start
        write_cells_csv(out, part)
        levels = f"levels {part.level.min()}-{part.level.max()}" if len(part) else "no cells"
        print(
            f"t_max={t_max} t_min={args.t_min}: {len(part)} cells ({levels}), {int(part.count.sum())} photos "
            f"kept, {part.dropped} photos in dropped cells; partitioned in {seconds:.2f} s -> {out}"
        )
        if args.plot:
            from tasks.geolocation.plots import save_partition_map

            png = save_partition_map(part, out.with_suffix(".png"), photos=(table.lat, table.lon))
            print(f"  map: {png}")
    return 0


def read_predictions(path: str | Path) -> dict[str, tuple[float, float]]:
    """`id,lat,lon[,...]` rows (ours or a peer's); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("id", "lat", "lon") if c not in header]
        if missing:
            raise ValueError(f"{path}:1: predictions need columns id,lat,lon; missing {','.join(missing)}")
        at = [header.index(c) for c in ("id", "lat", "lon")]
        found: dict[str, tuple[float, float]] = {}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) <= max(at):
                raise ValueError(f"{path}:{line}: missing column (row has {len(row)} fields)")
            key = row[at[0]].strip()
            try:
                lat, lon = float(row[at[1]]), float(row[at[2]])
            except ValueError:
                raise ValueError(
                    f"{path}:{line}: lat/lon not numbers: {row[at[1]]!r}, {row[at[2]]!r}"
                ) from None
            if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"{path}:{line}: position ({lat}, {lon}) outside [-90, 90] x [-180, 180]")
            if key in found:
                raise ValueError(f"{path}:{line}: duplicate id {key!r}")
            found[key] = (lat, lon)
    return found


def evaluate(
    truth, predictions: dict[str, tuple[float, float]], predictions_path: str = "predictions"
) -> dict:
    """Score predictions against a PhotoTable; an id on one side only is an error naming it."""
    truth_ids = set(truth.ids)
    missing = [key for key in truth.ids if key not in predictions]
    if missing:
        raise ValueError(
            f"{predictions_path}: no prediction for {len(missing)} id(s) of {truth.path}, first "
            f"{missing[0]!r}"
        )
    extra = [key for key in predictions if key not in truth_ids]
    if extra:
        raise ValueError(f"{predictions_path}: {len(extra)} id(s) not in {truth.path}, first {extra[0]!r}")
    predicted = np.array([predictions[key] for key in truth.ids])
    return geo_metrics(great_circle_km(truth.lat, truth.lon, predicted[:, 0], predicted[:, 1]))


def main_evaluate(argv: Sequence[str]) -> int:
    """Score any predictions file (columns id,lat,lon) against a truth CSV with the task's metrics."""
    parser = argparse.ArgumentParser(
        prog="mobilenets geolocation evaluate",
        description="Great-circle accuracy at 1/25/200/750/2500 km, median, GeoScore.",
    )
    parser.add_argument("--truth", required=True, help="truth CSV (IMG_ID,LAT,LON or id,latitude,longitude)")
    parser.add_argument("--predictions", required=True, help="CSV with id,lat,lon (more columns are ignored)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _column_options(parser)
    args = parser.parse_args(argv)
    truth = _read(parser, args.truth, args)
    try:
        scores = evaluate(truth, read_predictions(args.predictions), args.predictions)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.json:
        print(json.dumps({key: scores[key] for key in METRIC_KEYS}))
    else:
        from tasks.geolocation.module import format_table

        print(format_table({Path(args.predictions).name: scores}))
        print(
            f"{scores['count']} photos; mean error {scores['mean_km']:.0f} km (haversine, R = 6371 km, d < r)"
        )
    return 0


def main_shards(argv: Sequence[str]) -> int:
    """Write WebDataset shards (and shards.json) from a photo CSV and its image root."""
    parser = argparse.ArgumentParser(
        prog="mobilenets geolocation shards",
        description="CSV + image root -> WebDataset tar shards for training at scale.",
    )
    parser.add_argument("--csv", required=True)
    parser.add_argument("--images", required=True, help="image root the CSV's ids are relative to")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shard-size", type=int, default=10_000, help="photos per shard")
    parser.add_argument("--image-pattern", help="how an id becomes a file: {id} (MP-16) or {id}.jpg (OSV-5M)")
    parser.add_argument("--max-side", type=int, help="re-encode images larger than this (pixels)")
    _column_options(parser)
    args = parser.parse_args(argv)
    from tasks.geolocation.data import write_shards

    table = _read(parser, args.csv, args)
    if not Path(args.images).is_dir():
        parser.error(f"{args.images}: image root not found")
    index = write_shards(
        table,
        args.images,
        args.out,
        shard_size=args.shard_size,
        image_pattern=args.image_pattern,
        max_side=args.max_side,
    )
    print(
        f"wrote {index['total']} photos in {len(index['shards'])} shards to {args.out} "
        f"({index['skipped']} unreadable images skipped)"
    )
    return 0


def main_synth(argv: Sequence[str]) -> int:
    """Write the synthetic geotagged set to disk as a real data set (MP-16 or OSV-5M layout)."""
    parser = argparse.ArgumentParser(
        prog="mobilenets geolocation synth", description="The built-in synthetic world as CSVs + JPEGs."
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--format", choices=["mp16", "osv5m"], default="mp16")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cities", type=int, default=120)
    parser.add_argument("--regions", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from PIL import Image

    from tasks.common.io import write_csv
    from tasks.geolocation.synthetic import SyntheticGeo, make_world

    out = Path(args.out)
    world = make_world(args.seed, cities=args.cities, regions=args.regions)
    for split, count in (("train", args.train), ("test", args.test)):
        data = SyntheticGeo(world, count, split=split, size=args.size, seed=args.seed).with_countries()
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            name = f"{i:06d}"
            Image.fromarray(data.image(i)).save(folder / f"{name}.jpg", quality=92)
            position = [f"{data.lat[i]:.6f}", f"{data.lon[i]:.6f}"]
            if args.format == "mp16":
                rows.append([f"{split}/{name}.jpg", *position, data.countries[i]])
            else:
                rows.append([name, *position, data.countries[i], "", f"city{int(data.city[i])}"])
        header = (
            ["IMG_ID", "LAT", "LON", "country"]
            if args.format == "mp16"
            else ["id", "latitude", "longitude", "country", "region", "city"]
        )
        write_csv(out / f"{split}.csv", header, rows)
    root = out / "images" if args.format == "mp16" else out / "images/<split>"
    print(
        f"wrote {args.train} train and {args.test} test photos to {out} ({args.format}: "
        f"{{train,test}}.csv, images under {root})"
    )
    return 0


def main_baselines(argv: Sequence[str]) -> int:
    """Score the most-populous-cell and raw-pixel nearest-neighbour baselines on a recipe's test split."""
    parser = argparse.ArgumentParser(
        prog="mobilenets geolocation baselines",
        description="Baselines on the test photos of a recipe's data section.",
    )
    parser.add_argument(
        "--config", default=None, help="recipe YAML (default configs/geolocation/synthetic.yaml)"
    )
    parser.add_argument("--pixels", type=int, nargs="+", default=[16, 32], help="thumbnail sides to try")
    parser.add_argument("--limit-train", type=int, help="use at most this many training photos")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--out", help="write the scores as JSON here")
    args = parser.parse_args(argv)
    import yaml

    from tasks.common.lightning_cli import CONFIG_ROOT
    from tasks.geolocation.baselines import score_baselines, thumbnails
    from tasks.geolocation.data import GeolocationDataModule
    from tasks.geolocation.module import format_table

    config = Path(args.config) if args.config else CONFIG_ROOT / "geolocation" / "synthetic.yaml"
    data_options = (yaml.safe_load(config.read_text()) or {}).get("data", {})
    data_options.pop("augment", None)
    data = GeolocationDataModule(**{**data_options, "num_workers": args.num_workers})
    data.setup("fit")
    data.setup("test")
    train_set, test_set = data.splits["train"], data.splits["test"]
    train_set.transform = None  # raw photos, no augmentation
    results: dict[str, dict] = {}
    largest = max(args.pixels)
    train_px, train_xy, _ = thumbnails(
        train_set, largest, num_workers=args.num_workers, limit=args.limit_train
    )
    test_px, test_xy, _ = thumbnails(test_set, largest, num_workers=args.num_workers)
    for side in args.pixels:
        shrink = (lambda px, s=side: px) if side == largest else (lambda px, s=side: _shrink(px, largest, s))
        scores = score_baselines(data.partitions, (shrink(train_px), train_xy), (shrink(test_px), test_xy))
        results.setdefault("most_populous_cell", scores["most_populous_cell"])
        results[f"pixel_nn_{side}px"] = scores["pixel_nearest_neighbour"]
    print(f"{len(test_xy)} test photos, {len(train_xy)} training photos for retrieval")
    print(format_table(results))
    if args.out:
        from tasks.common.io import write_text_atomic

        write_text_atomic(args.out, json.dumps(results, indent=2))
    return 0


def _shrink(pixels: np.ndarray, side: int, target: int) -> np.ndarray:
    import cv2

    images = pixels.reshape(-1, side, side, 3)
    return np.stack(
        [cv2.resize(im, (target, target), interpolation=cv2.INTER_AREA).reshape(-1) for im in images]
    )


def main_profile(argv: Sequence[str]) -> int:
    from tasks.geolocation.profile import main

    return main(argv)
