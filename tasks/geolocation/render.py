"""The street scene of one synthetic photo: how a place looks at each scale (`synthetic.py` says what).

The world's cities and regions pick from the looks below: the continent's palette, the latitude's
sky and vegetation, the region's roof, wall texture and accent colour, the city's landmark; the rest
(horizon, layout, clutter, mirroring, light, noise) is drawn from the photo's own random stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from tasks.geolocation.synthetic import World

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
