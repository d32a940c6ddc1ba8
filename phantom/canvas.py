"""Canvas: the patient's anatomy and pose, the film in body coordinates, and the drawing
primitives that the frontal and lateral views share.

Body coordinates (frontal): u runs across the chest in units of the thoracic half-width
(u = -1 at the inner rib margin of the patient's RIGHT, which is the LEFT of the image, as on a
real PA film); v runs down from the lung apex (v = 0) to the costophrenic angles (v = lung
height, about 1.7). Every structure is defined in (u, v), so pose (shift, scale, rotation) is a
single change of coordinates. The lateral view uses the same units, anterior to the image left
and u = 0 at mid-depth.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .labels import Finding

RIGHT, LEFT = -1, +1  # the patient's side as a sign of u (patient right = image left)
SIDES = {"right": (RIGHT,), "left": (LEFT,), "bilateral": (RIGHT, LEFT)}
ZONES = {"upper": (0.0, 0.42), "middle": (0.38, 0.7), "lower": (0.62, 1.05)}  # fractions of lung height
#: How much a finding must change a pixel to count as part of its region (segmentations.py): this
#: fraction of the display window (Pose.high - Pose.low), before gamma and clipping; 0.02 is about
#: 5 of 255 grey levels, the size of a faint but visible edge.
VISIBLE_CHANGE = 0.02


@dataclass
class Anatomy:
    """One patient's chest, in thoracic half-widths. Findings that change anatomy (a big heart,
    a wide mediastinum, volume loss, a broken rib) are applied to a copy of it."""

    lung_height: float          # apex to costophrenic angle
    body_half_width: float      # skin outline at the chest
    neck_half_width: float
    ctr: float                  # cardiothoracic ratio (normal < 0.5)
    heart_aspect: float         # vertical / horizontal heart semi-axis
    mediastinum: float          # upper mediastinal half-width
    aortic_knob: float
    dome_height: float          # diaphragm dome height, fraction of lung height
    right_dome_raise: float     # the right hemidiaphragm sits higher
    rib_spacing: float
    rib_phase: float
    clavicle_level: float
    ap_depth: float             # lateral view: chest depth / chest width
    breasts: bool
    gastric_bubble: bool
    raise_right: float = 0.0    # volume loss: hemidiaphragm elevation (fraction of lung height)
    raise_left: float = 0.0
    shift: float = 0.0          # mediastinal shift towards the patient's left (+) or right (-)
    rib_fracture: tuple[int, int, float, float] | None = None  # side, rib, distance from midline, step


def sample_anatomy(rng: np.random.Generator, female: bool) -> Anatomy:
    """A random adult chest."""
    lung_height = rng.uniform(1.5, 1.85)
    return Anatomy(
        lung_height=lung_height, body_half_width=rng.uniform(1.12, 1.45) + 0.05 * female,
        neck_half_width=rng.uniform(0.36, 0.46), ctr=rng.uniform(0.40, 0.485),
        heart_aspect=rng.uniform(0.68, 0.8), mediastinum=rng.uniform(0.16, 0.21),
        aortic_knob=rng.uniform(0.06, 0.09), dome_height=rng.uniform(0.09, 0.15),
        right_dome_raise=rng.uniform(0.01, 0.05), rib_spacing=lung_height / rng.uniform(9.0, 10.5),
        rib_phase=rng.uniform(-0.1, 0.0), clavicle_level=rng.uniform(0.02, 0.1),
        ap_depth=rng.uniform(0.52, 0.66), breasts=female and rng.random() < 0.85,
        gastric_bubble=rng.random() < 0.75)


@dataclass
class Pose:
    """Where the chest lies on the detector and how it was exposed."""

    cx: float       # pixel position of the midline at apex height
    cy: float
    scale: float    # pixels per thoracic half-width
    angle: float    # radians
    low: float      # window: attenuation shown black ...
    high: float     # ... and white
    gamma: float
    noise: float
    heel: float     # exposure gradient from top to bottom (anode heel effect)


def sample_pose(rng: np.random.Generator, shape: tuple[int, int], a: Anatomy, view: str) -> Pose:
    """Random positioning and exposure; portable AP films are more rotated and noisier."""
    h, w = shape
    lateral = view == "LATERAL"
    scale = h * rng.uniform(0.56, 0.62) / a.lung_height
    if not lateral:
        scale = min(scale, w * rng.uniform(0.42, 0.46))
    tilt = math.radians(rng.uniform(-4, 4) if view == "AP" else rng.uniform(-2.5, 2.5))
    return Pose(cx=w * rng.uniform(0.47, 0.53),
                cy=h * rng.uniform(0.09, 0.14), scale=scale, angle=tilt,
                low=rng.uniform(-0.10, 0.06), high=rng.uniform(0.78, 1.08), gamma=rng.uniform(0.75, 1.3),
                noise=rng.uniform(0.008, 0.03) * (1.4 if view == "AP" else 1.0), heel=rng.uniform(-0.08, 0.08))


def ramp(d: np.ndarray | float, width: float) -> np.ndarray:
    """Soft step: 0 where d < -width/2, 1 where d > width/2 (anti-aliased edges)."""
    return np.clip(d / width + 0.5, 0.0, 1.0)


def sharpen(x: np.ndarray) -> np.ndarray:
    """x ** 8: thin bright ridges from a 0..1 cosine (repeated squaring is fast)."""
    x = x * x
    x *= x
    return x * x


def smooth_curve(points: list[tuple[float, float]], rounds: int = 3) -> np.ndarray:
    """Chaikin corner cutting: a smooth curve through a few control points."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(rounds):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        p = np.vstack([p[:1], np.column_stack([q, r]).reshape(-1, 2), p[-1:]])
    return p


class Canvas:
    """The film: body coordinates (u, v) of every pixel, and the layers whose sum is the
    attenuation image: soft tissue, lung air (a 0..1 fraction that opacities reduce), vessels,
    bone and metal. ``parts`` keeps where the structures that findings change lie (0..1, inside
    from 0.5): the heart, the mediastinum and a rib fracture, the regions of Cardiomegaly,
    Enlarged Cardiomediastinum and Fracture."""

    def __init__(self, shape: tuple[int, int], pose: Pose, lung_height: float):
        self.shape, self.pose, self.lh = shape, pose, lung_height
        y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
        dx, dy = x - pose.cx, y - pose.cy
        cos, sin = math.cos(pose.angle), math.sin(pose.angle)
        self.u = (dx * cos + dy * sin) / pose.scale
        self.v = (-dx * sin + dy * cos) / pose.scale
        self.soft, self.air, self.vessels, self.bone, self.metal = (np.zeros(shape, np.float32) for _ in range(5))
        self.lung: dict[int, np.ndarray] = {}
        self.geometry: dict[int, dict[str, np.ndarray | float]] = {}
        self.heart = (0.0, 0.0, 0.0, 0.0)
        self.parts: dict[str, np.ndarray] = {}

    def pixels(self, points: np.ndarray) -> np.ndarray:
        """Body coordinates -> fixed-point pixel coordinates for OpenCV (shift=4)."""
        p = self.pose
        cos, sin = math.cos(p.angle), math.sin(p.angle)
        x = p.cx + p.scale * (points[:, 0] * cos - points[:, 1] * sin)
        y = p.cy + p.scale * (points[:, 0] * sin + points[:, 1] * cos)
        return np.round(np.column_stack([x, y]) * 16).astype(np.int32)

    def stroke(self, points: list[tuple[float, float]], width: float, smooth: bool = True) -> np.ndarray:
        """0..1 mask of a (smoothed) polyline `width` body units wide."""
        layer = np.zeros(self.shape, np.uint8)
        curve = smooth_curve(points) if smooth and len(points) > 2 else np.asarray(points, np.float64)
        thickness = max(1, int(round(width * self.pose.scale)))
        cv2.polylines(layer, [self.pixels(curve)], False, 255, thickness, cv2.LINE_AA, shift=4)
        return layer.astype(np.float32) / 255.0

    def fill(self, points: list[tuple[float, float]], blur: float = 0.0) -> np.ndarray:
        """0..1 mask of a filled polygon, optionally blurred by `blur` body units."""
        layer = np.zeros(self.shape, np.uint8)
        cv2.fillPoly(layer, [self.pixels(np.asarray(points, np.float64))], 255, cv2.LINE_AA, shift=4)
        mask = layer.astype(np.float32) / 255.0
        sigma = blur * self.pose.scale
        return cv2.GaussianBlur(mask, (0, 0), sigma) if sigma > 0.5 else mask

    def ellipse(self, center: tuple[float, float], radii: tuple[float, float], edge: float = 0.02) -> np.ndarray:
        r = np.sqrt(((self.u - center[0]) / radii[0]) ** 2 + ((self.v - center[1]) / radii[1]) ** 2)
        return ramp(1.0 - r, edge / min(radii))

    def blob(self, center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
        return np.exp(-((self.u - center[0]) / radii[0]) ** 2 - ((self.v - center[1]) / radii[1]) ** 2)

    def noise(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        """Smooth random field (zero mean, unit spread) with about `cells` bumps across."""
        h, w = self.shape
        small = rng.standard_normal((max(2, cells * h // w), cells)).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)

    def attenuation(self) -> np.ndarray:
        """The sum of the layers: what the window turns into grey levels."""
        return self.soft - 0.27 * self.air + 0.13 * self.vessels * self.air + self.bone + self.metal

    def visible(self, change: np.ndarray) -> np.ndarray:
        """Where a change of attenuation shows: at least VISIBLE_CHANGE of the display window."""
        return np.abs(change) >= VISIBLE_CHANGE * (self.pose.high - self.pose.low)

    def expose(self, rng: np.random.Generator) -> np.ndarray:
        """The radiograph in 0..1 (bone white, air black): attenuation through a window, gamma,
        heel effect and quantum noise."""
        p = self.pose
        image = np.clip((self.attenuation() - p.low) / (p.high - p.low), 0.0, 1.0) ** p.gamma
        image *= 1.0 + p.heel * (self.v / self.lh - 0.5)
        image += p.noise * rng.standard_normal(self.shape, dtype=np.float32)
        return np.clip(image, 0.0, 1.0)


# ---- shared by both views --------------------------------------------------------------------

def vessel_tree(c: Canvas, rng: np.random.Generator, hilum_distance: np.ndarray) -> None:
    """Ridged noise fading with distance from the hila (both views), plus parenchymal texture."""
    ridges = sharpen(np.clip(1.0 - 1.6 * np.abs(c.noise(rng, 16)), 0.0, 1.0))
    c.vessels += ridges * np.exp(-hilum_distance / 0.5) + 0.25 * c.noise(rng, 45)
    c.soft += 0.03 * c.noise(rng, 5)


def patch_in(c: Canvas, region: np.ndarray, rng: np.random.Generator, coverage: float, softness: float,
             cells: int = 5) -> np.ndarray:
    """A random contiguous patch covering about `coverage` of `region`, with soft edges."""
    inside = region > 0.5
    if not inside.any():
        return np.zeros(c.shape, np.float32)
    weights = region * inside
    cu, cv = float((c.u * weights).sum() / weights.sum()), float((c.v * weights).sum() / weights.sum())
    field = c.noise(rng, cells) + 2.0 * c.blob((cu, cv), (0.35, 0.25 * c.lh))
    threshold = np.quantile(field[inside], 1.0 - coverage)
    return ramp(field - threshold, softness) * region


#: Lesion radius by severity (nodule, larger nodule, mass), the same in the frontal and lateral views.
LESION_RADIUS = {1: 0.045, 2: 0.07, 3: 0.12}


# ---- findings that change the anatomy (both views) -------------------------------------------

def enlarge_heart(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Cardiomegaly: cardiothoracic ratio above 0.5, graded."""
    a.ctr = rng.uniform(*{1: (0.55, 0.59), 2: (0.6, 0.65), 3: (0.66, 0.72)}[f.severity])
    a.heart_aspect *= 0.92


def widen_mediastinum(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Enlarged cardiomediastinum: a wide upper mediastinum and a prominent aortic knob."""
    a.mediastinum *= {1: 1.5, 2: 1.8, 3: 2.1}[f.severity] * rng.uniform(0.95, 1.05)
    a.aortic_knob *= 1.6


def lose_volume(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Atelectasis: the collapsed side's hemidiaphragm rises and the mediastinum shifts towards it."""
    for side in SIDES[f.side]:
        lift = {1: 0.06, 2: 0.09, 3: 0.13}[f.severity] * rng.uniform(0.8, 1.2)
        if side == RIGHT:
            a.raise_right = max(a.raise_right, lift)
        else:
            a.raise_left = max(a.raise_left, lift)
        if f.side != "bilateral":
            a.shift += side * {1: 0.015, 2: 0.03, 3: 0.07}[f.severity]


def break_rib(a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Fracture: one posterior rib broken laterally, its outer fragment stepped down."""
    side = SIDES[f.side][0]
    a.rib_fracture = (side, int(rng.integers(3, 8)), float(rng.uniform(0.55, 0.9)), 0.12 * f.severity)


ANATOMY_CHANGES = {"Cardiomegaly": enlarge_heart, "Enlarged Cardiomediastinum": widen_mediastinum,
                   "Atelectasis": lose_volume, "Fracture": break_rib}


def anatomy_with(a: Anatomy, findings: list[Finding], rng: np.random.Generator) -> Anatomy:
    """A copy of the patient's anatomy changed by the study's findings."""
    changed = dataclasses.replace(a)
    for f in findings:
        if f.label in ANATOMY_CHANGES:
            ANATOMY_CHANGES[f.label](changed, f, rng)
    return changed
