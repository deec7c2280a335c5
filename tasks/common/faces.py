"""The suite's procedural face renderer: a person (`Identity`) drawn once, then photographed many times.

Shared by the tasks that need faces with known content: face embeddings (identity is what is learned)
and face attributes (glasses, beard, hair... are what is learned). Each identity fixes a symmetric
face (symmetric because face pipelines flip horizontally); each photograph adds a cluttered background,
pose, illumination and sensor noise, which move most pixels while the face's cues stay visible.
The random draws are part of every synthetic data set's definition: changing their order changes
every image of every seed, so new traits are drawn after the existing ones.

`FaceExtras` are traits only some data sets draw (hats, fringes, lipstick, earrings... for face
attributes). They are an optional argument of `draw_face`, which without it draws exactly what it always
drew, and they are never sampled here: a data set that wants them draws them from its own generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

CANVAS = 128  # faces are drawn on a 128-px canvas in these units, then resized to `size`

SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96], [160, 102, 66],
     [120, 76, 48], [88, 56, 38], [236, 200, 170]], dtype=np.float64,
)
HAIR_COLOURS = np.array(
    [[20, 18, 18], [70, 45, 30], [125, 85, 50], [215, 180, 110], [170, 70, 30],
     [150, 150, 150], [235, 235, 225], [40, 60, 160], [170, 40, 130], [40, 140, 70]], dtype=np.float64,
)
EYE_COLOURS = np.array(
    [[80, 50, 25], [40, 90, 170], [50, 130, 70], [110, 110, 120], [15, 15, 15], [150, 110, 40]],
    dtype=np.float64,
)
HAIR_STYLES = ("bald", "crew", "cap", "long", "bun", "mohawk")
GLASSES = ("none", "none", "round", "square")


@dataclass(frozen=True)
class Identity:
    """What makes one synthetic person recognisable; lengths are in canvas pixels."""

    face_half_width: float
    face_half_height: float
    jaw: float  # 0 = oval, 1 = square chin
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    hair_volume: float
    eye_colour: tuple[int, int, int]
    eye_spacing: float
    eye_height: float
    eye_size: float
    brow_gap: float
    brow_tilt: float
    brow_thickness: int
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_height: float
    smile: float
    lips: tuple[int, int, int]
    ear_size: float
    glasses: str
    glasses_colour: tuple[int, int, int]
    beard: bool
    moles: tuple[tuple[float, float, float], ...]  # (x, y) as fractions of the face half-axes, radius


@dataclass(frozen=True)
class FaceExtras:
    """Optional traits drawn over an `Identity`; every default draws nothing. Lengths in canvas pixels."""

    hat: tuple[int, int, int] | None = None  # colour of a brimmed cap over the crown
    hat_height: float = 0.55  # the cap's crown, as a fraction of the face half-height
    bangs: float = 0.0  # fringe length: 0 none, 1 down to the eyebrows
    moustache: float = 0.0  # thickness of a band of hair above the upper lip
    mouth_open: float = 0.0  # gap between the lips
    lipstick: tuple[int, int, int] | None = None  # lip colour, drawn thicker than bare lips
    earrings: tuple[int, int, int] | None = None
    earring_radius: float = 2.0
    eye_shadow: tuple[int, int, int] | None = None
    eye_shadow_alpha: float = 0.0  # opacity of the shadow around each eye
    blush: float = 0.0  # opacity of rosy cheeks
    eye_openness: float = 1.0  # below 1 the lids cover the top and bottom of each eye


BLUSH_COLOUR = (225, 95, 110)
MOUTH_INSIDE = (70, 20, 28)


def _colour(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[int, int, int]:
    base = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return tuple(int(c) for c in np.clip(base, 0, 255))


def sample_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        face_half_width=rng.uniform(28, 40),
        face_half_height=rng.uniform(36, 48),
        jaw=rng.uniform(0, 1),
        skin=_colour(rng, SKIN_TONES, 10),
        hair=_colour(rng, HAIR_COLOURS, 12),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hair_volume=rng.uniform(4, 14),
        eye_colour=_colour(rng, EYE_COLOURS, 10),
        eye_spacing=rng.uniform(10, 18),
        eye_height=rng.uniform(-12, -2),
        eye_size=rng.uniform(4, 7.5),
        brow_gap=rng.uniform(5, 11),
        brow_tilt=rng.uniform(-0.35, 0.35),
        brow_thickness=int(rng.integers(2, 6)),
        nose_length=rng.uniform(8, 18),
        nose_width=rng.uniform(3, 9),
        mouth_width=rng.uniform(7, 17),
        mouth_height=rng.uniform(18, 28),
        smile=rng.uniform(-6, 8),
        lips=_colour(rng, np.array([[190, 70, 80], [150, 60, 60], [210, 120, 120], [120, 40, 70]]), 15),
        ear_size=rng.uniform(4, 10),
        glasses=GLASSES[rng.integers(len(GLASSES))],
        glasses_colour=_colour(rng, np.array([[10, 10, 10], [150, 30, 30], [200, 170, 60]]), 20),
        beard=bool(rng.random() < 0.25),
        # Drawn last so adding them left every other trait of an identity unchanged. Like real
        # moles they are small, fixed to the person, and the cue that separates look-alikes.
        moles=tuple(
            (float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.5, 0.7)), float(rng.uniform(2.5, 4.0)))
            for _ in range(int(rng.integers(0, 4)))
        ),
    )


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _blend_ellipse(layer: np.ndarray, centre, axes, colour, alpha: float) -> None:
    """Tint the pixels of a filled ellipse towards `colour` (opacity `alpha`), keeping them opaque."""
    region = np.zeros(layer.shape[:2], np.uint8)
    cv2.ellipse(region, centre, axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
    inside = region > 0
    weight = region[inside][:, None].astype(np.float32) * (alpha / 255)
    mixed = layer[inside] * (1 - weight) + np.asarray(colour, np.float32) * weight
    layer[inside] = np.clip(np.round(mixed), 1, 255).astype(np.uint8)


def draw_face(face: Identity, size: int, extras: FaceExtras | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The identity on a transparent canvas, resized to `size`: (float RGB layer, alpha in [0, 1]).

    `extras` adds the optional traits; without it the drawing is the one every existing data set
    was defined with (`tests/test_faces_render.py` pins it).
    """
    layer = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    cx, cy = CANVAS / 2, CANVAS / 2 + 6
    w, h = face.face_half_width, face.face_half_height
    aa = cv2.LINE_AA
    darker_hair = tuple(int(c * 0.6) for c in face.hair)

    if face.hair_style == "long":  # hair behind the head, down to the shoulders
        cv2.ellipse(layer, _pt(cx, cy), _pt(w + face.hair_volume, h + 4), 0, 180, 360, face.hair, -1, aa)
        cv2.rectangle(layer, _pt(cx - w - face.hair_volume, cy), _pt(cx + w + face.hair_volume, cy + h),
                      face.hair, -1)
    for side in (-1, 1):  # ears
        cv2.ellipse(layer, _pt(cx + side * w, cy - 2), _pt(face.ear_size * 0.6, face.ear_size), 0, 0, 360,
                    face.skin, -1, aa)
    # head: an ellipse whose lower half is blended towards a rectangle for square jaws
    cv2.ellipse(layer, _pt(cx, cy), _pt(w, h), 0, 0, 360, face.skin, -1, aa)
    jaw_w = w * (0.55 + 0.35 * face.jaw)
    chin = cy + h * (0.75 + 0.2 * face.jaw)
    cv2.rectangle(layer, _pt(cx - jaw_w, cy), _pt(cx + jaw_w, chin), face.skin, -1)
    if extras is not None:
        _draw_cheeks_and_earrings(layer, face, extras, cx, cy)

    if face.beard:
        cv2.ellipse(layer, _pt(cx, cy + h * 0.45), _pt(jaw_w, h * 0.5), 0, 0, 180, darker_hair, -1, aa)
    top = cy - h
    if face.hair_style in ("crew", "cap", "bun", "long"):
        depth = {"crew": 0.35, "cap": 0.55, "bun": 0.45, "long": 0.5}[face.hair_style]
        cv2.ellipse(layer, _pt(cx, cy - h * (1 - depth)), _pt(w + 2, h * depth + face.hair_volume * 0.5),
                    0, 180, 360, face.hair, -1, aa)
    if face.hair_style == "bun":
        radius = int(6 + face.hair_volume * 0.6)
        cv2.circle(layer, _pt(cx, top - face.hair_volume * 0.6), radius, face.hair, -1, aa)
    if face.hair_style == "mohawk":
        cv2.rectangle(layer, _pt(cx - 4, top - face.hair_volume), _pt(cx + 4, cy - h * 0.5), face.hair, -1)

    eye_y = cy + face.eye_height
    for side in (-1, 1):
        ex = cx + side * face.eye_spacing
        if extras is not None:
            before_eye = _draw_eye_shadow(layer, face, extras, ex, eye_y)
        cv2.ellipse(layer, _pt(ex, eye_y), _pt(face.eye_size * 1.4, face.eye_size), 0, 0, 360,
                    (245, 245, 240), -1, aa)
        cv2.circle(layer, _pt(ex, eye_y), int(round(face.eye_size * 0.8)), face.eye_colour, -1, aa)
        cv2.circle(layer, _pt(ex, eye_y), max(1, int(face.eye_size * 0.35)), (5, 5, 5), -1, aa)
        if extras is not None and extras.eye_openness < 1:
            _close_lids(layer, before_eye, face, extras, ex, eye_y)
        brow_y = eye_y - face.eye_size - face.brow_gap
        dx, dy = face.eye_size * 1.6, side * face.brow_tilt * face.eye_size * 1.6
        cv2.line(layer, _pt(ex - dx, brow_y - dy), _pt(ex + dx, brow_y + dy), darker_hair,
                 face.brow_thickness, aa)
        if face.glasses != "none":
            r = int(face.eye_size * 1.9)
            if face.glasses == "round":
                cv2.circle(layer, _pt(ex, eye_y), r, face.glasses_colour, 2, aa)
            else:
                cv2.rectangle(layer, _pt(ex - r, eye_y - r * 0.8), _pt(ex + r, eye_y + r * 0.8),
                              face.glasses_colour, 2, aa)
    if face.glasses != "none":
        cv2.line(layer, _pt(cx - face.eye_spacing + face.eye_size * 1.9, eye_y),
                 _pt(cx + face.eye_spacing - face.eye_size * 1.9, eye_y), face.glasses_colour, 2, aa)

    if extras is not None:
        _draw_bangs_and_hat(layer, face, extras, cx, cy, eye_y)

    nose_shadow = tuple(int(c * 0.7) for c in face.skin)
    nose_top, nose_tip = eye_y + 2, eye_y + 2 + face.nose_length
    nose = np.array([_pt(cx, nose_top), _pt(cx - face.nose_width, nose_tip),
                     _pt(cx + face.nose_width, nose_tip)])
    cv2.fillConvexPoly(layer, nose, nose_shadow, aa)

    mouth_y = cy + face.mouth_height
    mouth = np.array([_pt(cx + t * face.mouth_width, mouth_y + 0.5 * face.smile * (1 - t * t))
                      for t in np.linspace(-1, 1, 9)])
    if extras is None:
        cv2.polylines(layer, [mouth], False, face.lips, 3, aa)
    else:
        _draw_mouth(layer, face, extras, mouth, darker_hair)

    mole_colour = tuple(int(c * 0.45) for c in face.skin)
    for x, y, radius in face.moles:
        cv2.circle(layer, _pt(cx + x * w, cy + y * h), int(round(radius)), mole_colour, -1, aa)

    mask = layer.any(axis=2).astype(np.float32)
    resize = dict(dsize=(size, size), interpolation=cv2.INTER_AREA)
    return cv2.resize(layer.astype(np.float32), **resize), cv2.resize(mask, **resize)


def _draw_cheeks_and_earrings(layer: np.ndarray, face: Identity, extras: FaceExtras, cx: float,
                              cy: float) -> None:
    w, h = face.face_half_width, face.face_half_height
    for side in (-1, 1):
        if extras.blush > 0:
            _blend_ellipse(layer, _pt(cx + side * 0.5 * w, cy + 0.22 * h), _pt(0.2 * w, 0.12 * h),
                           BLUSH_COLOUR, extras.blush)
        if extras.earrings is not None:
            radius = extras.earring_radius
            lobe = _pt(cx + side * (w + 0.3 * face.ear_size), cy - 2 + 0.85 * face.ear_size + radius)
            cv2.circle(layer, lobe, max(1, int(round(radius))), extras.earrings, -1, cv2.LINE_AA)


def _draw_eye_shadow(layer: np.ndarray, face: Identity, extras: FaceExtras, ex: float,
                     eye_y: float) -> np.ndarray | None:
    """Tint around one eye; returns the layer before the eye is drawn when the lids will need it."""
    if extras.eye_shadow is not None and extras.eye_shadow_alpha > 0:
        size = face.eye_size
        _blend_ellipse(layer, _pt(ex, eye_y - size * 0.45), _pt(size * 1.8, size * 1.4), extras.eye_shadow,
                       extras.eye_shadow_alpha)
    return layer.copy() if extras.eye_openness < 1 else None


def _close_lids(layer: np.ndarray, before_eye: np.ndarray, face: Identity, extras: FaceExtras, ex: float,
                eye_y: float) -> None:
    """Keep the eye just drawn only inside a flatter ellipse: what lies outside returns to the lid."""
    keep = np.zeros(layer.shape[:2], np.uint8)
    half_height = max(1, int(round(face.eye_size * extras.eye_openness)))
    cv2.ellipse(keep, _pt(ex, eye_y), (int(round(face.eye_size * 1.4)), half_height), 0, 0, 360, 1, -1)
    outside = np.zeros(layer.shape[:2], np.uint8)
    cv2.ellipse(outside, _pt(ex, eye_y), _pt(face.eye_size * 1.5, face.eye_size * 1.1), 0, 0, 360, 1, -1)
    restore = (outside > 0) & (keep == 0)
    layer[restore] = before_eye[restore]


def _draw_bangs_and_hat(layer: np.ndarray, face: Identity, extras: FaceExtras, cx: float, cy: float,
                        eye_y: float) -> None:
    w, h = face.face_half_width, face.face_half_height
    if extras.bangs > 0:  # a fringe from the hairline towards the eyebrows, with a ragged edge
        hairline = cy - h * 0.85
        brows = eye_y - face.eye_size - face.brow_gap
        bottom = hairline + extras.bangs * (brows + 1 - hairline)
        xs = np.linspace(-0.85 * w, 0.85 * w, 11)
        edge = [_pt(cx + x, bottom - 3 * (i % 2)) for i, x in enumerate(xs)]
        polygon = np.array([_pt(cx - 0.85 * w, cy - h), *edge, _pt(cx + 0.85 * w, cy - h)])
        cv2.fillPoly(layer, [polygon], face.hair, cv2.LINE_AA)
    if extras.hat is not None:  # a cap: crown over the head and a brim across the forehead
        brim_y = cy - h * 0.7
        cv2.ellipse(layer, _pt(cx, brim_y), _pt(w + 3, h * extras.hat_height), 0, 180, 360, extras.hat, -1,
                    cv2.LINE_AA)
        darker = tuple(max(1, int(c * 0.7)) for c in extras.hat)
        cv2.rectangle(layer, _pt(cx - w - 7, brim_y - 2), _pt(cx + w + 7, brim_y + 3), darker, -1)


def _draw_mouth(layer: np.ndarray, face: Identity, extras: FaceExtras, mouth: np.ndarray,
                hair_colour: tuple[int, int, int]) -> None:
    """Lips (thicker with lipstick), the opening between them, and a moustache above."""
    lips = extras.lipstick if extras.lipstick is not None else face.lips
    thickness = 4 if extras.lipstick is not None else 3
    if extras.mouth_open > 0:
        t = np.linspace(-1, 1, len(mouth))
        lower = mouth + np.stack([np.zeros_like(t), extras.mouth_open * (1 - 0.6 * t * t)], 1)
        lower = np.round(lower).astype(np.int32)
        cv2.fillPoly(layer, [np.concatenate([mouth, lower[::-1]])], MOUTH_INSIDE, cv2.LINE_AA)
        cv2.polylines(layer, [lower], False, lips, thickness, cv2.LINE_AA)
    cv2.polylines(layer, [mouth], False, lips, thickness, cv2.LINE_AA)
    if extras.moustache > 0:
        band = np.round(mouth * [1.1, 1] + [-0.1 * mouth[len(mouth) // 2, 0], -2 - extras.moustache / 2])
        cv2.polylines(layer, [band.astype(np.int32)], False, hair_colour,
                      max(1, int(round(extras.moustache))), cv2.LINE_AA)


def render_photo(face_layer: np.ndarray, face_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One photograph of a face (already at output size): cluttered background, pose, light, noise."""
    size = face_layer.shape[0]
    grid = np.linspace(-1.0, 1.0, size, dtype=np.float32)

    def ramp() -> np.ndarray:  # a linear gradient across the image in a random direction, in [-1, 1]
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        return (cos * grid[None, :] + sin * grid[:, None])[..., None]

    t = ramp() * 0.5 + 0.5
    background = (rng.uniform(0, 255, 3).astype(np.float32) * (1 - t)
                  + rng.uniform(0, 255, 3).astype(np.float32) * t).astype(np.uint8)
    scale = size / CANVAS
    for _ in range(int(rng.integers(3, 8))):  # clutter
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v * scale) for v in rng.integers(0, CANVAS, 2))
        if rng.random() < 0.5:
            cv2.circle(background, (x, y), int(rng.integers(6, 30) * scale), colour, -1, cv2.LINE_AA)
        else:
            x2, y2 = (int(v * scale) for v in rng.integers(0, CANVAS, 2))
            width = max(1, int(rng.integers(2, 10) * scale))
            cv2.line(background, (x, y), (x2, y2), colour, width, cv2.LINE_AA)

    pose = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-8, 8), rng.uniform(0.93, 1.07))
    pose[:, 2] += rng.uniform(-0.05, 0.05, 2) * size
    face = cv2.warpAffine(face_layer, pose, (size, size), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(face_mask, pose, (size, size), flags=cv2.INTER_LINEAR)[..., None]
    image = face * alpha + background * (1 - alpha)

    light = (1 + np.float32(rng.uniform(0, 0.15)) * ramp()) * rng.uniform(0.9, 1.1, 1).astype(np.float32)
    image *= light * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
    return np.clip(image, 0, 255).round().astype(np.uint8)
