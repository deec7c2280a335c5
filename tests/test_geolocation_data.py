"""Geotagged photo formats from fixtures written in the real layouts, every bad-row case naming file and
line, missing/corrupt images skipped and counted, WebDataset shards, and disjoint shards per DDP rank."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import s2cell
import torch
import torch.multiprocessing as mp
from PIL import Image

from tasks.geolocation.cells import partition
from tasks.geolocation.data import (
    FolderImages,
    GeoImages,
    GeolocationDataModule,
    ShardedGeoImages,
    read_photo_csv,
    write_shards,
)
from tasks.geolocation.landmask import is_land, land_mask
from tasks.geolocation.synthetic import SyntheticGeo, make_world

# OSV-5M's train.csv / test.csv header (REFERENCE §7)
OSV5M_HEADER = (
    "id,latitude,longitude,thumb_original_url,country,sequence,captured_at,lon_bin,lat_bin,cell,region,"
    "sub-region,city,land_cover,road_index,drive_side,climate,soil,dist_sea,quadtree_10_10,quadtree_10_100,"
    "quadtree_10_1000,quadtree_10_5000,quadtree_10_25000,quadtree_10_50000,unique_region,unique_sub-region,"
    "unique_city,unique_country,creator_username,creator_id"
)


def osv5m_row(key, lat, lon, country="FR", city="Paris"):
    fields = dict.fromkeys(OSV5M_HEADER.split(","), "0")
    fields.update(
        id=key,
        latitude=lat,
        longitude=lon,
        country=country,
        city=city,
        region="Ile-de-France",
        thumb_original_url="https://example.org/x.jpg",
        creator_username="someone",
    )
    return ",".join(str(fields[name]) for name in OSV5M_HEADER.split(","))


def test_mp16_im2gps_and_yfcc_style_csvs_are_recognised(tmp_path):
    path = tmp_path / "im2gps3k_places365.csv"
    path.write_text(
        "IMG_ID,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor\n"
        "1001_86f7c3b4c3_o.jpg,48.8584,2.2945,1,4,230,0.1\n"
        "42/a1/3563483734.jpg,-33.8568,151.2153,2,9,11,0.2\n"
    )
    table = read_photo_csv(path)
    assert table.kind == "mp16" and table.ids == ["1001_86f7c3b4c3_o.jpg", "42/a1/3563483734.jpg"]
    assert np.allclose(table.lat, [48.8584, -33.8568]) and np.allclose(table.lon, [2.2945, 151.2153])
    assert list(table.lines) == [2, 3] and table.countries is None


def test_osv5m_csv_keeps_country_region_city(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        OSV5M_HEADER
        + "\n"
        + osv5m_row("2356781234", 48.85, 2.35)
        + "\n"
        + osv5m_row("998877", 35.68, 139.69, "JP", "Tokyo")
        + "\n"
    )
    table = read_photo_csv(path)
    assert table.kind == "osv5m" and table.ids == ["2356781234", "998877"]
    assert table.countries == ["FR", "JP"] and table.extra["city"] == ["Paris", "Tokyo"]
    assert table.extra["sub-region"] == ["0", "0"]


def test_column_names_can_be_given(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("photo,y,x\na.jpg,10,20\n")
    with pytest.raises(ValueError, match=r"mine.csv:1: header photo,y,x lacks .*id_column"):
        read_photo_csv(path)
    table = read_photo_csv(path, id_column="photo", lat_column="y", lon_column="x")
    assert table.ids == ["a.jpg"] and table.lat[0] == 10 and table.lon[0] == 20


BAD_ROWS = [
    ("b.jpg,91.0,2.0", "LAT 91.0 outside \\[-90, 90\\]"),
    ("b.jpg,-90.5,2.0", "LAT -90.5 outside"),
    ("b.jpg,10,180.5", "LON 180.5 outside \\[-180, 180\\]"),
    ("b.jpg,nan,2.0", "LAT/LON not finite: nan, 2.0"),
    ("b.jpg,10,inf", "LAT/LON not finite: 10.0, inf"),
    ("b.jpg,10", "missing column LON"),
    ("b.jpg,ten,2.0", "LAT/LON not numbers"),
    (",10,2.0", "empty IMG_ID"),
    ("a.jpg,10,2.0", "duplicate IMG_ID 'a.jpg' \\(first on line 2\\)"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_every_bad_row_names_file_and_line_or_is_skipped_and_counted(tmp_path, row, message):
    path = tmp_path / "photos.csv"
    path.write_text(f"IMG_ID,LAT,LON\na.jpg,1,1\n{row}\nc.jpg,3,3\n")
    with pytest.raises(ValueError, match=rf"photos.csv:3: {message}"):
        read_photo_csv(path)
    table = read_photo_csv(path, skip_bad_rows=True)
    assert table.ids == ["a.jpg", "c.jpg"] and table.skipped == 1


def test_missing_header_column_and_empty_files(tmp_path):
    (tmp_path / "x.csv").write_text("IMG_ID,LAT\na,1\n")
    with pytest.raises(ValueError, match=r"x.csv:1: header IMG_ID,LAT lacks"):
        read_photo_csv(tmp_path / "x.csv")
    (tmp_path / "y.csv").write_text("IMG_ID,LAT,LON\n")
    with pytest.raises(ValueError, match="y.csv: no usable rows"):
        read_photo_csv(tmp_path / "y.csv")
    with pytest.raises(FileNotFoundError, match="z.csv: photo CSV not found"):
        read_photo_csv(tmp_path / "z.csv")


def write_images(root, names, size=40):
    rng = np.random.default_rng(0)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(path)


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    names = [f"d{i}/p{i}.jpg" for i in range(5)]
    write_images(tmp_path / "img", names)
    (tmp_path / "img" / "d1" / "p1.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "img" / "d3" / "p3.jpg").unlink()
    (tmp_path / "p.csv").write_text(
        "IMG_ID,LAT,LON\n" + "".join(f"{n},{i},{i}\n" for i, n in enumerate(names))
    )
    data = GeoImages(read_photo_csv(tmp_path / "p.csv"), tmp_path / "img", labels=np.zeros((5, 2), np.int64))
    from tasks.common.transforms import classification_eval

    data.transform = classification_eval(32)
    keys = [data[i][1]["key"] for i in range(5)]
    assert keys == ["d0/p0.jpg", "d2/p2.jpg", "d2/p2.jpg", "d4/p4.jpg", "d4/p4.jpg"]
    assert len(data.skipped) == 2
    image, target = data[0]
    assert image.shape == (3, 32, 32) and target["cells"].tolist() == [0, 0]
    assert target["coords"].tolist() == [0.0, 0.0]


def test_osv5m_layout_trains_from_its_image_folders(tmp_path):
    """id -> images/train/<id>.jpg; the data module partitions the training photos and labels them."""
    keys = [str(1000 + i) for i in range(12)]
    write_images(tmp_path / "images" / "train", [f"{k}.jpg" for k in keys])
    rows = [osv5m_row(k, 48.8 + 0.01 * i, 2.3, "FR") for i, k in enumerate(keys[:6])]
    rows += [osv5m_row(k, -33.8, 151.2 + 0.01 * i, "AU") for i, k in enumerate(keys[6:])]
    (tmp_path / "train.csv").write_text(OSV5M_HEADER + "\n" + "\n".join(rows) + "\n")
    data = GeolocationDataModule(
        "csv",
        train_csv=str(tmp_path / "train.csv"),
        train_images=str(tmp_path / "images" / "train"),
        test_csv=str(tmp_path / "train.csv"),
        test_images=str(tmp_path / "images" / "train"),
        t_max=[100, 3],
        t_min=1,
        image_size=32,
        batch_size=4,
        num_workers=0,
    )
    assert data.num_cells[0] == 2 and data.num_cells[1] >= 4
    data.setup("fit")
    images, target = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and target["cells"].shape == (4, 2)
    assert set(target["country"]) <= {"FR", "AU"} and (target["cells"] >= 0).all()


def test_data_module_partitions_and_labels_equal_the_per_photo_s2cell_path(tmp_path):
    """The set-up's shortcuts (vectorised leaf ids, made once for partitioning and labelling, labels
    filled a partition at a time) against the straightforward path: one `s2cell` call per photo, and
    `partition`'s own class of every photo."""
    rng = np.random.default_rng(5)
    city = rng.integers(0, 12, 3000)
    lat = np.clip(rng.uniform(-60, 70, 12)[city] + rng.normal(0, 0.3, 3000), -90, 90)
    lon = (rng.uniform(-180, 180, 12)[city] + rng.normal(0, 0.3, 3000) + 180) % 360 - 180
    pairs = list(zip(lat.tolist(), lon.tolist(), strict=True))
    rows = "".join(f"p{i}.jpg,{a!r},{b!r}\n" for i, (a, b) in enumerate(pairs))
    (tmp_path / "train.csv").write_text("IMG_ID,LAT,LON\n" + rows)
    csv_path, root = str(tmp_path / "train.csv"), str(tmp_path)
    data = GeolocationDataModule("csv", train_csv=csv_path, train_images=root, val_csv=csv_path,
                                 val_images=root, t_max=[400, 60], t_min=8, num_workers=0)  # fmt: skip
    data.setup("fit")
    table = data.table("train")
    assert np.array_equal(table.lat, lat) and np.array_equal(table.lon, lon)
    leaves = np.array([s2cell.lat_lon_to_cell_id(a, b, 30) for a, b in pairs], np.uint64)
    labels = data.splits["train"].labels
    for k, t_max in enumerate([400, 60]):
        part, classes = partition(leaves, lat, lon, t_max=t_max, t_min=8)
        assert np.array_equal(data.partitions[k].cell_id, part.cell_id)
        assert np.array_equal(data.partitions[k].count, part.count)
        assert np.array_equal(labels[:, k], classes) and (classes == -1).any() and len(part) > 5
    assert labels.dtype == np.int64 and np.array_equal(data.splits["val"].labels, labels)
    assert np.array_equal(data.assign(lat, lon), labels)
    assert not data._leaves  # the shared leaf ids are let go once every split is labelled


def test_synthetic_set_is_deterministic_and_test_photos_differ_from_training_photos():
    world = make_world(3, cities=10, regions=4)
    train = SyntheticGeo(world, 400, split="train", size=32, seed=3)
    test = SyntheticGeo(world, 400, split="test", size=32, seed=3)
    again = SyntheticGeo(make_world(3, cities=10, regions=4), 400, split="train", size=32, seed=3)
    assert np.array_equal(train.image(5), again.image(5)) and np.array_equal(train.lat, again.lat)
    same_city = [(i, j) for i in range(50) for j in range(50) if train.city[i] == test.city[j]]
    assert same_city and all(not np.array_equal(train.image(i), test.image(j)) for i, j in same_city[:20])
    assert not np.allclose(train.lat[:50], test.lat[:50])
    assert is_land(world.city_lat, world.city_lon).all()


def test_shipped_land_mask_knows_land_from_sea():
    assert is_land(
        [48.85, 40.7, -33.9, -15.8], [2.35, -74.0, 151.2, -47.9]
    ).all()  # Paris, NYC, Sydney, Brasília
    assert not is_land([0.0, 30.0, -40.0], [-140.0, -40.0, 80.0]).any()  # Pacific, Atlantic, Indian Ocean
    assert 0.28 < land_mask().mean() < 0.36  # ~29 % of the Earth is land; the grid's cells shrink polewards


def write_shard_fixture(tmp_path, count=20, shard_size=5):
    names = [f"p{i:03d}.jpg" for i in range(count)]
    write_images(tmp_path / "img", names, size=24)
    (tmp_path / "p.csv").write_text(
        "IMG_ID,LAT,LON,country\n" + "".join(f"{n},{i},{-i},X{i % 3}\n" for i, n in enumerate(names))
    )
    return write_shards(
        read_photo_csv(tmp_path / "p.csv"), tmp_path / "img", tmp_path / "shards", shard_size=shard_size
    )


def test_shards_round_trip_every_photo_once(tmp_path):
    index = write_shard_fixture(tmp_path, count=13, shard_size=5)
    assert [s["count"] for s in index["shards"]] == [5, 5, 3] and index["total"] == 13
    data = ShardedGeoImages(
        tmp_path / "shards", lambda lat, lon: np.stack([lat.astype(int)], 1), shuffle_buffer=4
    )
    items = list(data)
    assert len(items) == len(data) == 13
    keys = sorted(target["key"] for _, target in items)
    assert keys == [f"p{i:03d}.jpg" for i in range(13)]
    image, target = items[0]
    assert image.shape == (3, 24, 32)
    assert target["cells"].tolist() == [int(target["coords"][0])] and target["country"].startswith("X")
    assert sorted(t["key"] for _, t in data) == keys  # a second epoch, reshuffled, still every photo once


def _rank_reads(rank: int, folder: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    data = ShardedGeoImages(folder, lambda lat, lon: np.zeros((len(lat), 1), np.int64), batch_size=2)
    keys = [t["key"] for _, t in data]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump({"keys": keys, "length": len(data)}, handle)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shards_and_the_same_number_of_samples(tmp_path):
    write_shard_fixture(tmp_path, count=17, shard_size=4)  # shards of 4, 4, 4, 4, 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank_reads, args=(str(tmp_path / "shards"), port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["length"] for r in ranks] == [8, 8]  # 17 // 2 = 8, a multiple of the batch size 2
    assert [len(r["keys"]) for r in ranks] == [8, 8]
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])
    shard_of = {f"p{i:03d}.jpg": i // 4 for i in range(17)}
    assert {shard_of[k] for k in ranks[0]["keys"]} <= {0, 2, 4} and {
        shard_of[k] for k in ranks[1]["keys"]
    } <= {1, 3}


def test_predict_folder_needs_no_csv(tmp_path):
    write_images(tmp_path / "new", ["a.jpg", "sub/b.png"])
    data = FolderImages(tmp_path / "new")
    assert len(data) == 2
    image, target = data[1]
    assert target["key"].endswith("sub/b.png") and np.isnan(target["coords"]).all()
