"""PlaNet's adaptive S2 partition: exact counts on a hand-made example, the invariants on 20k clustered
points, the vectorised cell-id arithmetic against `s2cell`, cells.csv, and the `partition` command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import s2cell

from tasks.cli import main
from tasks.geolocation.cells import (
    Partition,
    ancestors,
    cell_levels,
    cell_outline,
    contains,
    leaf_cell_ids,
    parent_ids,
    partition,
    partitions,
    read_cells_csv,
    to_lat_lon,
    to_xyz,
    write_cells_csv,
)


def children(cell: int) -> list[int]:
    """S2's four children of a cell id (`child_begin` then steps of lsb/2), checked against s2cell."""
    lsb = cell & -cell
    found = [cell - lsb + (lsb >> 2) + k * (lsb >> 1) for k in range(4)]
    level = s2cell.cell_id_to_level(cell)
    assert all(s2cell.cell_id_to_parent_cell_id(c, level) == cell for c in found)
    return found


def centre(cell: int) -> tuple[float, float]:
    return s2cell.cell_id_to_lat_lon(cell)


def test_parent_and_level_arithmetic_matches_s2cell():
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-90, 90, 500), rng.uniform(-180, 180, 500)
    ids = leaf_cell_ids(lat, lon)
    assert [int(i) for i in ids[:20]] == [
        s2cell.lat_lon_to_cell_id(a, b, 30) for a, b in zip(lat[:20], lon[:20], strict=True)
    ]
    for level in (0, 1, 7, 16, 29, 30):
        expected = [s2cell.cell_id_to_parent_cell_id(int(i), level) for i in ids]
        assert [int(p) for p in parent_ids(ids, level)] == expected
        assert (cell_levels(parent_ids(ids, level)) == level).all()
        assert contains(parent_ids(ids, level), ids).all()
    other = parent_ids(ids[::-1], 5)
    assert not contains(other[:100], ids[:100]).all()


def edge_points(rng: np.random.Generator, cells: int = 400) -> np.ndarray:
    """(lat, lon) rows where a last-bit difference would show: poles, the antimeridian, signed zeros,
    cube-face edges and corners (|x| = |y|, |z| = |x|: lat 35.26..), and the centres of random cells of
    every level, each of which is the shared corner of four children (a leaf-cell boundary)."""
    lats = [-90.0, 90.0, 0.0, -0.0, 45.0, -45.0, 35.26438968275465, -35.26438968275465, 89.9999999, 1e-300]
    lons = [-180.0, 180.0, 0.0, -0.0, 45.0, -45.0, 90.0, -90.0, 135.0, -135.0, 179.99999999, -1e-300]
    points = [(a, b) for a in lats for b in lons]
    leaves = [s2cell.lat_lon_to_cell_id(a, b, 30) for a, b in rng.uniform([-90, -180], [90, 180], (cells, 2))]
    for leaf, level in zip(leaves, rng.integers(0, 30, cells), strict=True):
        points.append(centre(s2cell.cell_id_to_parent_cell_id(leaf, int(level))))
    return np.array(points)


def test_array_leaf_ids_are_s2cells_bit_for_bit(monkeypatch):
    """`leaf_cell_ids` (vectorised, a chunk at a time) against one `s2cell` call per point: random points
    on the sphere and `edge_points`, over several chunks."""
    import tasks.geolocation.cells as cells

    monkeypatch.setattr(cells, "LEAF_CHUNK", 1000)
    rng = np.random.default_rng(7)
    uniform = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, 4000))), rng.uniform(-180, 180, 4000)], 1)
    lat, lon = np.concatenate([uniform, edge_points(rng)]).T
    ids = leaf_cell_ids(lat, lon)
    assert ids.dtype == np.uint64 and len(ids) == len(lat) > 4500
    assert ids.tolist() == [
        s2cell.lat_lon_to_cell_id(a, b, 30) for a, b in zip(lat.tolist(), lon.tolist(), strict=True)
    ]
    assert leaf_cell_ids([], []).shape == (0,)
    with pytest.raises(ValueError, match="one length"):
        leaf_cell_ids([1.0, 2.0], [3.0])


def hand_made_points() -> tuple[list[tuple[float, float]], dict]:
    """17 photos whose PlaNet partition (t_max 6, t_min 2) is known by construction.

    On one face, a level-1 cell C holds 14: its child c0 holds 6 (kept whole at level 2: not above t_max),
    c1 holds 7 (split: its children hold 4, 2 and 1 -> kept, kept, dropped), c2 holds 1 (dropped).
    On another face, 3 photos: the face (level 0) holds 3 and is kept. Dropped: 2 photos.
    """
    paris = s2cell.lat_lon_to_cell_id(48.85, 2.35, 30)
    big = s2cell.cell_id_to_parent_cell_id(paris, 1)
    c0, c1, c2, _ = children(big)
    points = [centre(g) for g in children(c0)] + [centre(g) for g in children(children(c0)[0])[:2]]
    k0, k1, k2, _ = children(c1)
    points += [centre(g) for g in children(k0)]  # 4 photos in k0, spread over its children
    points += [centre(g) for g in children(k1)[:2]]  # 2 in k1
    points += [centre(k2)]  # 1 in k2
    points += [centre(children(c2)[3])]  # 1 in c2
    sydney = s2cell.lat_lon_to_cell_id(-33.87, 151.21, 30)
    points += [(-33.87, 151.21)] * 3
    expected = {
        (s2cell.cell_id_to_parent_cell_id(sydney, 0), 0, 3),
        (c0, 2, 6),
        (k0, 3, 4),
        (k1, 3, 2),
    }
    return points, expected


def test_hand_made_partition_has_exact_cells_counts_and_drops():
    points, expected = hand_made_points()
    lat, lon = np.array(points).T
    part, classes = partition(leaf_cell_ids(lat, lon), lat, lon, t_max=6, t_min=2)
    assert {
        (int(c), int(lv), int(n)) for c, lv, n in zip(part.cell_id, part.level, part.count, strict=True)
    } == expected
    assert part.dropped == 2 and int(part.count.sum()) + part.dropped == len(points) == 17
    assert list(part.cell_id) == sorted(part.cell_id)  # classes in cell-id order
    assert (classes == -1).sum() == 2
    assert np.array_equal(np.bincount(classes[classes >= 0]), part.count)
    # t_min 1 keeps the two singles; t_max 100 keeps whole faces
    loose, _ = partition(leaf_cell_ids(lat, lon), lat, lon, t_max=6, t_min=1)
    assert len(loose) == 6 and loose.dropped == 0
    faces, _ = partition(leaf_cell_ids(lat, lon), lat, lon, t_max=100, t_min=1)
    assert sorted(faces.count) == [3, 14] and set(faces.level) == {0}
    # starting lower: min_level 2 makes the far face's photos one level-2 cell
    deeper, _ = partition(leaf_cell_ids(lat, lon), lat, lon, t_max=6, t_min=2, min_level=2)
    assert sorted(deeper.level) == [2, 2, 3, 3]


def clustered(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.stack([rng.uniform(-60, 70, 80), rng.uniform(-180, 180, 80)], 1)
    weight = 1 / np.arange(1, 81)
    city = rng.choice(80, n, p=weight / weight.sum())
    spread = rng.uniform(0.02, 1.5, 80)[city]
    lat = np.clip(centres[city, 0] + rng.normal(0, 1, n) * spread, -89.9, 89.9)
    lon = (centres[city, 1] + rng.normal(0, 1, n) * spread + 180) % 360 - 180
    return lat, lon


@pytest.mark.parametrize("t_max,t_min,max_level", [(500, 20, 30), (100, 5, 30), (300, 10, 6)])
def test_partition_invariants_on_20k_clustered_photos(t_max, t_min, max_level):
    lat, lon = clustered()
    leaves = leaf_cell_ids(lat, lon)
    part, classes = partition(leaves, lat, lon, t_max=t_max, t_min=t_min, max_level=max_level)
    # counts within [t_min, t_max] unless the cell is at max_level
    assert (part.count >= t_min).all()
    assert ((part.count <= t_max) | (part.level == max_level)).all()
    if max_level == 6:
        assert (part.count > t_max).any()  # the dense clusters stop at level 6 (~150 km)
    # disjoint: sorted id ranges [id - (lsb-1), id + (lsb-1)] do not overlap
    lsb = part.cell_id & (~part.cell_id + np.uint64(1))
    low, high = part.cell_id - (lsb - np.uint64(1)), part.cell_id + (lsb - np.uint64(1))
    assert (high[:-1] < low[1:]).all()
    # every photo of a kept cell lies in exactly one kept cell, the one it was given
    inside = np.zeros(len(lat), int)
    for i, cell in enumerate(part.cell_id):
        hit = contains(np.full(len(leaves), cell), leaves)
        inside += hit
        assert (classes[hit] == i).all()
    assert ((inside == 1) == (classes >= 0)).all() and (inside <= 1).all()
    # counts add up
    assert int(part.count.sum()) + part.dropped == len(lat)
    assert np.array_equal(np.bincount(classes[classes >= 0], minlength=len(part)), part.count)
    assert np.array_equal(part.assign(leaves), classes)


def test_cell_mean_is_taken_on_the_sphere():
    lat = np.array([10.0, 10.0, -10.0, -10.0])
    lon = np.array([179.9, -179.9, 179.9, -179.9])  # around the antimeridian, all on one cube face
    part, _ = partition(leaf_cell_ids(lat, lon), lat, lon, t_max=10, t_min=1, max_level=0)
    assert len(part) == 1 and part.count[0] == 4
    assert (
        abs(abs(part.mean_lon[0]) - 180) < 1e-6 and abs(part.mean_lat[0]) < 1e-9
    )  # the planar mean says lon 0


def test_cell_means_are_the_plain_sums_over_their_photos(monkeypatch):
    """`spherical_means` (unit vectors made a chunk at a time, one bincount over all photos) gives to the
    last bit the normalised sum of each kept cell's photos, added one by one in photo order; dropped
    photos count nowhere."""
    import tasks.geolocation.cells as cells

    monkeypatch.setattr(cells, "LEAF_CHUNK", 500)
    lat, lon = clustered(3000, seed=2)
    part, classes = partition(leaf_cell_ids(lat, lon), lat, lon, t_max=200, t_min=15)
    assert (classes == -1).any() and len(part) > 5
    xyz, sums = to_xyz(lat, lon).tolist(), [[0.0, 0.0, 0.0] for _ in range(len(part))]
    for cell, vector in zip(classes.tolist(), xyz, strict=True):
        if cell >= 0:
            sums[cell] = [total + value for total, value in zip(sums[cell], vector, strict=True)]
    mean_lat, mean_lon = to_lat_lon(np.array(sums))
    assert np.array_equal(part.mean_lat, mean_lat) and np.array_equal(part.mean_lon, mean_lon)


def test_coarse_partitions_contain_the_fine_ones_and_cells_csv_round_trips(tmp_path):
    lat, lon = clustered(5000, seed=1)
    coarse, middle, fine = partitions(lat, lon, t_max=[1000, 300, 80], t_min=10)
    assert len(coarse) < len(middle) < len(fine)
    for parent in (coarse, middle):
        index = ancestors(fine, parent)
        assert (index >= 0).all()  # nested rule, same t_min: every fine cell has its ancestor
        assert contains(parent.cell_id[index], fine.cell_id).all()
    write_cells_csv(tmp_path / "cells.csv", fine)
    back = read_cells_csv(tmp_path / "cells.csv")
    assert np.array_equal(back.cell_id, fine.cell_id) and np.array_equal(back.count, fine.count)
    assert np.allclose(back.mean_lat, fine.mean_lat, atol=1e-6) and np.allclose(back.lon, fine.lon, atol=1e-6)
    again = Partition.from_dict(fine.as_dict())
    assert np.array_equal(again.cell_id, fine.cell_id) and np.array_equal(again.level, fine.level)
    with open(tmp_path / "cells.csv") as handle:
        header = next(csv.reader(handle))
    assert header == ["class", "token", "level", "lat", "lon", "mean_lat", "mean_lon", "count"]


@pytest.mark.parametrize(
    "line,message",
    [
        ("0,zz,1,0,0,0,0,5", "not a valid S2 token"),
        ("0,1c,3,0,0,0,0,5", "level-1 cell, the row says level 3"),
        ("1,1c,1,0,0,0,0,5", "class 1 out of order"),
        ("0,1c,1,0,0,0,0", "expected 8 fields"),
        ("0,1c,1,95,0,0,0,5", "latitudes within"),
        ("0,1c,one,0,0,0,0,5", "must be integers"),
    ],
)
def test_bad_cells_csv_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "cells.csv"
    path.write_text("class,token,level,lat,lon,mean_lat,mean_lon,count\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"cells.csv:2: .*{message}"):
        read_cells_csv(path)


def test_cell_outline_surrounds_the_cell_centre():
    cell = s2cell.cell_id_to_parent_cell_id(s2cell.lat_lon_to_cell_id(48.85, 2.35, 30), 6)
    outline = cell_outline(cell)
    lat, lon = centre(cell)
    assert outline[:, 0].min() < lat < outline[:, 0].max() and outline[:, 1].min() < lon < outline[:, 1].max()
    assert 0.5 < outline[:, 0].max() - outline[:, 0].min() < 3  # a level-6 cell is ~150 km across


def test_partition_command_writes_cells_and_reports_drops(tmp_path, capsys):
    points, _ = hand_made_points()
    photos = tmp_path / "photos.csv"
    photos.write_text("IMG_ID,LAT,LON\n" + "".join(f"p{i}.jpg,{a},{b}\n" for i, (a, b) in enumerate(points)))
    out = tmp_path / "cells.csv"
    assert (
        main(
            [
                "geolocation",
                "partition",
                "--csv",
                str(photos),
                "--out",
                str(out),
                "--t-max",
                "6",
                "--t-min",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "4 cells" in printed and "15 photos kept, 2 photos in dropped cells" in printed
    part = read_cells_csv(out)
    assert sorted(part.count) == [2, 3, 4, 6]
    # several partitions at once, each with its map
    assert (
        main(
            [
                "geolocation",
                "partition",
                "--csv",
                str(photos),
                "--out",
                str(out),
                "--t-max",
                "100",
                "6",
                "--t-min",
                "1",
                "--plot",
            ]
        )
        == 0
    )
    assert len(read_cells_csv(tmp_path / "cells_t100.csv")) == 2
    assert len(read_cells_csv(tmp_path / "cells_t6.csv")) == 6
    assert (tmp_path / "cells_t6.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(
            [
                "geolocation",
                "partition",
                "--csv",
                str(photos),
                "--out",
                str(out),
                "--t-max",
                "2",
                "--t-min",
                "5",
            ]
        )
    assert "t_min (5) must not exceed t_max (2)" in capsys.readouterr().err
