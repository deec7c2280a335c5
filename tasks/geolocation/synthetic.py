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

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.common.transforms import to_model_input
from tasks.geolocation.landmask import is_land
from tasks.geolocation.metrics import EARTH_RADIUS_KM, great_circle_km

SPLITS = {"train": 0, "val": 1, "test": 2}
KM_PER_DEGREE = np.pi * EARTH_RADIUS_KM / 180
CONTINENTS = {  # anchor (lat, lon), ground colour, two building colours (RGB)
    "north_america": ((42.0, -100.0), (125, 112, 95), ((185, 62, 50), (205, 205, 215))),
    "south_america": ((-15.0, -60.0), (170, 122, 70), ((232, 200, 80), (60, 150, 160))),
    "europe": ((50.0, 15.0), (88, 100, 80), ((222, 212, 190), (150, 82, 60))),
    "africa": ((5.0, 20.0), (192, 142, 82), ((205, 152, 102), (240, 238, 228))),
    "asia": ((35.0, 95.0), (108, 90, 92), ((202, 52, 62), (62, 72, 125))),
    "oceania": ((-25.0, 135.0), (202, 172, 122), ((102, 162, 205), (238, 222, 200))),
}
ROOFS = ("flat", "gable", "dome", "spire")
TEXTURES = ("plain", "bands", "windows", "columns")
LANDMARKS = ("tower", "arch", "pyramid", "obelisk", "wheel", "twin")
LANDMARK_COLOURS = ((230, 40, 40), (40, 200, 60), (40, 80, 230), (240, 220, 40), (200, 60, 220), (30, 30, 30))
ORNAMENTS = ("none", "band", "ball", "flag")
LANDMARK_SHARE = 0.75


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


# -- rendering -----------------------------------------------------------------------------------
def _sky(lat: float) -> np.ndarray:
    """Deep blue in the tropics to pale grey-blue towards the poles."""
    t = min(abs(lat) / 70.0, 1.0)
    return np.array([70, 140, 235]) * (1 - t) + np.array([200, 210, 220]) * t


def _vegetation(lat: float) -> tuple[str, np.ndarray, tuple[int, int]]:
    """(kind, colour, count range) of the plants at this latitude."""
    a = abs(lat)
    if a < 15:
        return "tree", np.array([20, 110, 30]), (4, 8)
    if a < 33:
        return "shrub", np.array([150, 150, 60]), (1, 3)
    if a < 50:
        return "tree", np.array([70, 150, 60]), (2, 5)
    return "conifer", np.array([20, 70, 45]), (3, 6)


def _poly(image: np.ndarray, points, colour) -> None:
    cv2.fillPoly(
        image,
        [np.round(np.asarray(points) * 16).astype(np.int32)],
        tuple(float(c) for c in colour),
        cv2.LINE_AA,
        shift=4,
    )


def _building(image, rng, x0, width, base, height, roof, texture, colour, accent) -> None:
    top = base - height
    _poly(image, [[x0, base], [x0 + width, base], [x0 + width, top], [x0, top]], colour)
    dark = colour * 0.45
    if texture == "bands":
        for y in np.arange(top + height * 0.2, base - 1, max(height * 0.25, 2.0)):
            _poly(
                image,
                [
                    [x0, y],
                    [x0 + width, y],
                    [x0 + width, y + max(height * 0.07, 1)],
                    [x0, y + max(height * 0.07, 1)],
                ],
                accent,
            )
    elif texture == "windows":
        step = max(width / 3.0, 2.5)
        for wx in np.arange(x0 + step * 0.35, x0 + width - 1, step):
            for wy in np.arange(top + step * 0.4, base - step * 0.4, step):
                _poly(
                    image,
                    [
                        [wx, wy],
                        [wx + step * 0.4, wy],
                        [wx + step * 0.4, wy + step * 0.4],
                        [wx, wy + step * 0.4],
                    ],
                    dark,
                )
    elif texture == "columns":
        for cx in np.linspace(x0 + width * 0.15, x0 + width * 0.85, 3):
            _poly(
                image,
                [
                    [cx - width * 0.05, base],
                    [cx + width * 0.05, base],
                    [cx + width * 0.05, top],
                    [cx - width * 0.05, top],
                ],
                accent,
            )
    cx = x0 + width / 2
    if roof == "gable":
        _poly(image, [[x0 - 1, top], [x0 + width + 1, top], [cx, top - width * 0.45]], accent)
    elif roof == "dome":
        cv2.ellipse(
            image,
            (int(cx * 16), int(top * 16)),
            (int(width * 8), int(width * 5)),
            0,
            180,
            360,
            tuple(float(c) for c in accent),
            -1,
            cv2.LINE_AA,
            shift=4,
        )
    elif roof == "spire":
        _poly(image, [[cx - width * 0.12, top], [cx + width * 0.12, top], [cx, top - width * 1.1]], accent)
    else:
        _poly(
            image,
            [
                [x0 - 1, top],
                [x0 + width + 1, top],
                [x0 + width + 1, top - max(height * 0.06, 1)],
                [x0 - 1, top - max(height * 0.06, 1)],
            ],
            dark,
        )


def _landmark(image, rng, shape, colour, ornament, cx, base, height) -> None:
    w = height * 0.35
    top = base - height
    if shape == "tower":
        _poly(
            image,
            [[cx - w * 0.35, base], [cx + w * 0.35, base], [cx + w * 0.15, top], [cx - w * 0.15, top]],
            colour,
        )
    elif shape == "arch":
        _poly(image, [[cx - w, base], [cx - w * 0.55, base], [cx - w * 0.55, top], [cx - w, top]], colour)
        _poly(image, [[cx + w * 0.55, base], [cx + w, base], [cx + w, top], [cx + w * 0.55, top]], colour)
        _poly(
            image,
            [[cx - w, top], [cx + w, top], [cx + w, top + height * 0.18], [cx - w, top + height * 0.18]],
            colour,
        )
    elif shape == "pyramid":
        _poly(image, [[cx - w * 1.3, base], [cx + w * 1.3, base], [cx, top]], colour)
    elif shape == "obelisk":
        _poly(
            image,
            [
                [cx - w * 0.2, base],
                [cx + w * 0.2, base],
                [cx + w * 0.12, top + w * 0.3],
                [cx, top],
                [cx - w * 0.12, top + w * 0.3],
            ],
            colour,
        )
    elif shape == "wheel":
        r = height * 0.38
        cv2.circle(
            image,
            (int(cx * 16), int((top + r) * 16)),
            int(r * 16),
            tuple(float(c) for c in colour),
            max(1, int(height / 14)),
            cv2.LINE_AA,
            shift=4,
        )
        _poly(image, [[cx - w * 0.4, base], [cx + w * 0.4, base], [cx, top + r]], colour)
    else:  # twin towers
        for side in (-1, 1):
            x = cx + side * w * 0.45
            _poly(
                image,
                [[x - w * 0.2, base], [x + w * 0.2, base], [x + w * 0.2, top], [x - w * 0.2, top]],
                colour,
            )
    if ornament == "band":
        y = base - height * 0.55
        _poly(
            image,
            [
                [cx - w * 0.8, y],
                [cx + w * 0.8, y],
                [cx + w * 0.8, y + height * 0.08],
                [cx - w * 0.8, y + height * 0.08],
            ],
            (250, 250, 250),
        )
    elif ornament == "ball":
        cv2.circle(
            image,
            (int(cx * 16), int((top - height * 0.06) * 16)),
            int(max(height * 0.09, 1.5) * 16),
            (250, 200, 30),
            -1,
            cv2.LINE_AA,
            shift=4,
        )
    elif ornament == "flag":
        _poly(
            image,
            [[cx, top], [cx + w * 0.9, top - height * 0.07], [cx, top - height * 0.16]],
            (250, 250, 250),
        )


def render(world: World, city: int, lat: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 street scene taken at latitude `lat` in `city`."""
    s = float(size)
    continent = list(CONTINENTS.values())[world.city_continent[city]]
    ground = np.array(continent[1], float) + rng.uniform(-12, 12, 3)
    palette = [np.array(c, float) for c in continent[2]]
    region = world.city_region[city]
    roof, texture = ROOFS[world.region_style[region, 0]], TEXTURES[world.region_style[region, 1]]
    accent = world.region_accent[region]
    horizon = rng.uniform(0.38, 0.62) * s
    image = np.empty((size, size, 3), np.float32)
    sky = _sky(lat) + rng.uniform(-15, 15, 3)
    rows = np.linspace(0, 1, size)[:, None]
    image[:] = (sky * (0.85 + 0.15 * rows))[:, None, :]
    kind, plant, plants = _vegetation(lat)
    if kind == "conifer":
        ground = ground * 0.4 + 150  # snow
    image[int(horizon) :] = ground
    # buildings along the horizon
    for _ in range(rng.integers(2, 6)):
        width = rng.uniform(0.10, 0.24) * s
        x0 = rng.uniform(-0.05, 0.95) * s - width / 2
        base = horizon + rng.uniform(0.0, 0.12) * s
        colour = palette[rng.integers(0, 2)] * rng.uniform(0.85, 1.1)
        _building(image, rng, x0, width, base, rng.uniform(0.15, 0.35) * s, roof, texture, colour, accent)
    # the city's landmark, most of the time
    if rng.random() < LANDMARK_SHARE:
        shape, colour, ornament = world.city_landmark[city]
        _landmark(
            image,
            rng,
            LANDMARKS[shape],
            LANDMARK_COLOURS[colour],
            ORNAMENTS[ornament],
            rng.uniform(0.2, 0.8) * s,
            horizon + rng.uniform(0.05, 0.2) * s,
            rng.uniform(0.35, 0.55) * s,
        )
    # vegetation in front
    for _ in range(rng.integers(*plants)):
        x, y = rng.uniform(0, s), horizon + rng.uniform(0.08, 0.45) * s
        h = rng.uniform(0.08, 0.2) * s
        colour = plant * rng.uniform(0.8, 1.2)
        if kind == "conifer":
            _poly(image, [[x - h * 0.3, y], [x + h * 0.3, y], [x, y - h]], colour)
        elif kind == "shrub":
            cv2.ellipse(
                image,
                (int(x * 16), int(y * 16)),
                (int(h * 6), int(h * 3)),
                0,
                180,
                360,
                tuple(float(c) for c in colour),
                -1,
                cv2.LINE_AA,
                shift=4,
            )
        else:
            _poly(
                image,
                [
                    [x - h * 0.05, y],
                    [x + h * 0.05, y],
                    [x + h * 0.05, y - h * 0.5],
                    [x - h * 0.05, y - h * 0.5],
                ],
                (90, 60, 40),
            )
            cv2.circle(
                image,
                (int(x * 16), int((y - h * 0.65) * 16)),
                int(h * 0.35 * 16),
                tuple(float(c) for c in colour),
                -1,
                cv2.LINE_AA,
                shift=4,
            )
    # clutter: people, cars, signs in random colours
    for _ in range(rng.integers(1, 5)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = rng.uniform(0, s), horizon + rng.uniform(0.1, 0.5) * s
        a, b = rng.uniform(0.02, 0.08, 2) * s
        cv2.ellipse(
            image,
            (int(x * 16), int(y * 16)),
            (int(a * 16), int(b * 16)),
            float(rng.uniform(0, 180)),
            0,
            360,
            colour,
            -1,
            cv2.LINE_AA,
            shift=4,
        )
    if rng.random() < 0.5:
        image = image[:, ::-1]
    gain = rng.uniform(0.7, 1.3) * rng.uniform(0.88, 1.12, 3)
    image = image * gain + rng.uniform(-20, 20) + rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


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
