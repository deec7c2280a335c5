"""A geotagged photo set drawn on the fly, so geolocation trains and tests with no download.

The world (fixed by the seed): cities on land (the shipped land mask), grouped into regions, of very
different sizes (Zipf), so photos cluster like real photo density. A photo is taken near one city
(Gaussian spread of a few km, wider for big cities) and shows a street scene whose content depends on
where it was taken, at several scales:

- continent (nearest of six anchors): the palette of ground and buildings;
- latitude: sky colour, vegetation (lush trees in the tropics, sparse shrubs in the arid belts, trees
  in the temperate zones, conifers on snow towards the poles);
- region: the buildings' roof shape and wall texture, and an accent colour;
- city: its landmark (shape, colour, ornament), in three photos of four.

Everything else is nuisance: horizon height, where and how big things are, the number of buildings,
clutter, mirroring, light level and colour cast, sensor noise. Coarse scales are easy (colour), the
region needs shapes and textures, the city needs the landmark: coarse learnable, fine hard. A nearest
neighbour on raw pixels mostly finds the palette.

Images are a pure function of (seed, split, index): nothing is stored, every worker sees the same
data, and a test photo is never a training photo (its own random stream), even of the same city.
"""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.common.transforms import to_model_input
from tasks.geolocation.landmask import is_land
from tasks.geolocation.metrics import EARTH_RADIUS_KM, great_circle_km
from tasks.geolocation.render import (  # noqa: F401 - the looks are public here too
    CONTINENTS,
    LANDMARK_COLOURS,
    LANDMARK_SHARE,
    LANDMARKS,
    ORNAMENTS,
    ROOFS,
    TEXTURES,
    render,
)

SPLITS = {"train": 0, "val": 1, "test": 2}
KM_PER_DEGREE = np.pi * EARTH_RADIUS_KM / 180


@dataclass(frozen=True)
class World:
    """Cities (lat, lon, region, weight, spread) and the attributes that make them look different."""

    city_lat: np.ndarray
    city_lon: np.ndarray
    city_region: np.ndarray
    city_weight: np.ndarray  # share of all photos
    city_spread_km: np.ndarray
    city_landmark: np.ndarray  # (cities, 3): shape, colour, ornament
    region_lat: np.ndarray
    region_lon: np.ndarray
    region_style: np.ndarray  # (regions, 2): roof, texture
    region_accent: np.ndarray  # (regions, 3) RGB
    city_continent: np.ndarray

    @property
    def num_cities(self) -> int:
        return len(self.city_lat)


def _land_points(
    rng: np.random.Generator,
    count: int,
    near: tuple[float, float] | None = None,
    radius_km: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """`count` points on land: uniform on the sphere within latitude [-50, 65], or around `near`."""
    found: list[np.ndarray] = []
    while sum(len(f) for f in found) < count:
        if near is None:
            lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-50)), np.sin(np.radians(65)), 256)))
            lon = rng.uniform(-180, 180, 256)
        else:
            distance = rng.uniform(*radius_km, 256) / KM_PER_DEGREE
            bearing = rng.uniform(0, 2 * np.pi, 256)
            lat = np.clip(near[0] + distance * np.cos(bearing), -80, 80)
            lon = (near[1] + distance * np.sin(bearing) / np.cos(np.radians(lat)) + 180) % 360 - 180
        land = is_land(lat, lon)
        found.append(np.stack([lat[land], lon[land]], 1))
    return np.concatenate(found)[:count]


def make_world(seed: int = 0, *, cities: int = 120, regions: int = 30, zipf: float = 1.0) -> World:
    """The world of `seed`: `regions` region centres on land, `cities` cities 60-700 km around them."""
    if cities < 2 or regions < 1:
        raise ValueError(f"need at least 2 cities and 1 region, got {cities}, {regions}")
    rng = np.random.default_rng([seed, 7])
    centres = _land_points(rng, regions)
    region = np.arange(cities) % regions
    rng.shuffle(region)
    places = np.concatenate([_land_points(rng, 1, tuple(centres[r]), (60.0, 700.0)) for r in region])
    weight = 1.0 / np.arange(1, cities + 1) ** zipf
    weight = rng.permutation(weight / weight.sum())
    spread = 3.0 + 9.0 * np.sqrt(weight / weight.max())
    combos = np.array(
        [
            (s, c, o)
            for s in range(len(LANDMARKS))
            for c in range(len(LANDMARK_COLOURS))
            for o in range(len(ORNAMENTS))
        ]
    )
    pick = (
        rng.permutation(len(combos))[:cities]
        if cities <= len(combos)
        else rng.integers(0, len(combos), cities)
    )
    style = np.stack([np.arange(regions) % len(ROOFS), (np.arange(regions) // len(ROOFS)) % len(TEXTURES)], 1)
    style = style[rng.permutation(regions)]
    anchors = np.array([spec[0] for spec in CONTINENTS.values()])
    continent = np.argmin(great_circle_km(places[:, :1], places[:, 1:], anchors[:, 0], anchors[:, 1]), axis=1)
    return World(
        city_lat=places[:, 0],
        city_lon=places[:, 1],
        city_region=region,
        city_weight=weight,
        city_spread_km=spread,
        city_landmark=combos[pick],
        region_lat=centres[:, 0],
        region_lon=centres[:, 1],
        region_style=style,
        region_accent=rng.uniform(40, 235, (regions, 3)),
        city_continent=continent,
    )


def photo_locations(
    world: World, seed: int, split: str, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(city, lat, lon) of the `count` photos of `split`: cities by weight, Gaussian spread in km."""
    rng = np.random.default_rng([seed, SPLITS[split], 1])
    city = rng.choice(world.num_cities, size=count, p=world.city_weight)
    north, east = (rng.normal(size=count) * world.city_spread_km[city] for _ in range(2))
    lat = np.clip(world.city_lat[city] + north / KM_PER_DEGREE, -89.9, 89.9)
    lon = world.city_lon[city] + east / (KM_PER_DEGREE * np.cos(np.radians(lat)))
    return city, lat, (lon + 180) % 360 - 180



class SyntheticGeo(Dataset):
    """`count` photos of `split` in `world`, rendered when indexed.

    Items are (image tensor, target) with target `{"cells": class per partition, "coords": (lat, lon),
    "key", "country"}`, as the CSV datasets give them; `labels` (count, partitions) is set by the data
    module once the partitions exist. `transform` is an albumentations pipeline before `to_model_input`.
    """

    def __init__(
        self,
        world: World,
        count: int,
        *,
        split: str = "train",
        size: int = 64,
        seed: int = 0,
        transform: Callable | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.world = world
        self.split = split
        self.size = size
        self.seed = seed
        self.transform = transform
        self.city, self.lat, self.lon = photo_locations(world, seed, split, count)
        self.labels = np.zeros((count, 0), np.int64)
        self.countries: list[str] | None = None  # filled by `with_countries`

    def __len__(self) -> int:
        return len(self.lat)

    @cached_property
    def city_countries(self) -> list[str]:
        from tasks.geolocation.metrics import countries_of

        return countries_of(self.world.city_lat, self.world.city_lon)

    def with_countries(self) -> SyntheticGeo:
        """Give every photo its city's country (reverse-geocoded offline), for the per-country report."""
        names = self.city_countries
        self.countries = [names[c] for c in self.city]
        return self

    def image(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], 2, index])
        return render(self.world, int(self.city[index]), float(self.lat[index]), rng, self.size)

    def key(self, index: int) -> str:
        """How predictions name item `index` (also its file name when written to disk)."""
        return f"{self.split}/{index:06d}.jpg"

    def __getitem__(self, index: int):
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        target = {
            "cells": torch.from_numpy(self.labels[index]),
            "coords": torch.tensor([self.lat[index], self.lon[index]], dtype=torch.float64),
            "key": self.key(index),
            "country": self.countries[index] if self.countries is not None else "",
        }
        return to_model_input(image), target


__all__ = ["SyntheticGeo", "World", "make_world", "photo_locations", "render"]
