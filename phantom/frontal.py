"""Frontal view (PA and AP): the normal chest one function per anatomical structure, then one
function per finding and per support device, each drawn on a canvas.Canvas in body coordinates."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .canvas import LEFT, LESION_RADIUS, RIGHT, SIDES, ZONES, Anatomy, Canvas, patch_in, ramp, vessel_tree
from .labels import COMMON_DEVICES, Finding

# ---- frontal anatomy: one function per structure ---------------------------------------------

def body_outline(c: Canvas, a: Anatomy) -> None:
    """Soft tissue of the trunk, brighter where it is thicker; the neck above the shoulders."""
    half = a.neck_half_width + (a.body_half_width - a.neck_half_width) * ramp(c.v + 0.14 * c.lh, 0.25 * c.lh)
    depth = np.sqrt(np.clip(1.0 - (c.u / half) ** 2, 0.0, 1.0))
    c.soft += 0.5 * depth ** 0.6


def lungs(c: Canvas, a: Anatomy) -> None:
    """Two lungs: rounded apices, rib-cage lateral walls, domed hemidiaphragms with sharp
    costophrenic angles (the right dome higher)."""
    for side in (RIGHT, LEFT):
        x = side * c.u
        t = np.clip(c.v / c.lh, 0.0, 1.0)
        raise_ = (a.raise_right + a.right_dome_raise) if side == RIGHT else a.raise_left
        lateral = 0.62 + 0.38 * t ** 0.45
        top = 0.28 * c.lh * ((x - 0.5) / 0.5) ** 2
        costophrenic = c.lh * (1.0 - 0.6 * raise_)
        dome = c.lh * (1.0 - a.dome_height - raise_)
        diaphragm = costophrenic - (costophrenic - dome) * np.clip(1.0 - ((x - 0.45) / 0.62) ** 2, 0.0, 1.0)
        edge = 0.012
        mask = ramp(lateral - x, edge) * ramp(x - 0.06, edge) * ramp(c.v - top, edge) * ramp(diaphragm - c.v, edge)
        c.lung[side] = mask
        c.geometry[side] = {"x": x, "lateral": lateral, "top": top, "costophrenic": costophrenic, "dome": dome}
        np.maximum(c.air, mask, out=c.air)


def mediastinum(c: Canvas, a: Anatomy) -> None:
    """Upper mediastinum between the lungs, with the aortic knob bulging to the patient's left.
    Its part between the apices and the left dome is the Enlarged Cardiomediastinum region."""
    uc = c.u - a.shift
    widening = 1.0 + 0.6 * np.clip(c.v / c.lh - 0.25, 0.0, 0.4)
    knob = a.aortic_knob * np.exp(-((c.v - 0.2 * c.lh) / (0.07 * c.lh)) ** 2)
    half = np.where(uc > 0, a.mediastinum * widening + knob, 0.85 * a.mediastinum * widening)
    mask = ramp(half - np.abs(uc), 0.03)
    c.parts["mediastinum"] = mask * ((c.v >= 0.0) & (c.v <= c.geometry[LEFT]["dome"]))
    c.air *= 1.0 - mask
    c.soft += 0.05 * mask


def heart(c: Canvas, a: Anatomy) -> None:
    """The cardiac silhouette: a tilted ellipse, two-thirds left of the midline, its apex
    pointing down and to the left, resting on the left hemidiaphragm. Its horizontal extent over
    the thoracic width is the cardiothoracic ratio; the whole ellipse is the Cardiomegaly region."""
    tilt = math.radians(32.0)
    ratio = a.heart_aspect
    major = a.ctr / math.sqrt(math.cos(tilt) ** 2 + (ratio * math.sin(tilt)) ** 2)
    vertical = major * math.sqrt(math.sin(tilt) ** 2 + (ratio * math.cos(tilt)) ** 2)
    center_u = a.shift + 0.27 * a.ctr
    center_v = c.geometry[LEFT]["dome"] - 0.3 * vertical
    du, dv = c.u - center_u, c.v - center_v
    along = du * math.cos(tilt) + dv * math.sin(tilt)
    across = -du * math.sin(tilt) + dv * math.cos(tilt)
    r = np.sqrt((along / major) ** 2 + (across / (ratio * major)) ** 2)
    mask = ramp(1.0 - r, 0.02 / (ratio * major))
    c.heart = (center_u, center_v, a.ctr, vertical)
    c.parts["heart"] = mask
    c.air *= 1.0 - mask
    c.soft += 0.06 * mask * ramp(center_v + 0.3 * vertical - c.v, 0.05 * c.lh)


def hila(c: Canvas, a: Anatomy) -> None:
    """Pulmonary arteries at the hila."""
    for side in (RIGHT, LEFT):
        c.soft += 0.08 * c.blob((side * 0.27 + a.shift, 0.42 * c.lh), (0.08, 0.12 * c.lh))


def trachea(c: Canvas, a: Anatomy) -> None:
    """Air column in the midline down to the carina, then the main bronchi."""
    tx = 1.2 * a.shift
    column = ramp(0.05 - np.abs(c.u - tx), 0.015) * ramp(0.3 * c.lh - c.v, 0.03)
    bronchi = (c.stroke([(tx, 0.3 * c.lh), (tx - 0.24, 0.42 * c.lh)], 0.05, smooth=False)
               + c.stroke([(tx, 0.3 * c.lh), (tx + 0.24, 0.45 * c.lh)], 0.05, smooth=False))
    c.soft -= 0.16 * column + 0.1 * np.minimum(bronchi, 1.0)


def gastric_bubble(c: Canvas, a: Anatomy) -> None:
    """Air in the stomach under the left hemidiaphragm."""
    if a.gastric_bubble:
        dome = c.geometry[LEFT]["dome"]
        c.soft -= 0.2 * c.ellipse((0.45, dome + 0.1 * c.lh), (0.14, 0.055 * c.lh), edge=0.03)


def breasts(c: Canvas, a: Anatomy) -> None:
    """Breast shadows over the lower zones (a confounder for basal findings)."""
    if a.breasts:
        for side in (RIGHT, LEFT):
            c.soft += 0.09 * c.ellipse((side * 0.62, 1.02 * c.lh), (0.45, 0.3 * c.lh), edge=0.25)


def spine(c: Canvas, a: Anatomy) -> None:
    """Thoracic vertebral bodies behind the mediastinum, separated by darker disc spaces."""
    level = (c.v / (c.lh / 10.0)) % 1.0
    discs = 0.75 + 0.25 * ramp(0.4 - np.abs(level - 0.5), 0.06)
    c.bone += 0.07 * ramp(0.085 - np.abs(c.u), 0.02) * discs * ramp(c.v + 0.4 * c.lh, 0.1)


def posterior_ribs(c: Canvas, a: Anatomy, broken: bool) -> np.ndarray:
    """0..1 bands of the posterior ribs arching down and out from the spine; ``broken``: with the
    anatomy's fracture (one rib interrupted, its lateral end stepped down)."""
    x = np.abs(c.u)
    w = c.v - 0.26 * c.lh * np.clip(x, 0.0, 1.1) ** 1.7
    if broken:
        side, rib, at, step = a.rib_fracture
        on_rib = np.abs(w - a.rib_phase - (rib + 0.25) * a.rib_spacing) < 0.6 * a.rib_spacing
        lateral_part = (np.sign(c.u) == side) & (x > at) & on_rib
        w = w - step * a.rib_spacing * lateral_part
    index = (w - a.rib_phase) / a.rib_spacing
    phase = index - np.floor(index)
    band = ramp(0.2 - np.abs(phase - 0.2), 0.08) * (index >= 0) * (index < 10)
    band *= ramp(x - 0.07, 0.03) * ramp(1.1 - x, 0.05) * ramp(1.08 * c.lh - c.v, 0.1 * c.lh)
    if broken:
        side, rib, at, step = a.rib_fracture
        gap = (np.sign(c.u) == side) & (np.floor(index) == rib) & (np.abs(x - at) < 0.012 + 0.02 * step)
        band *= 1.0 - gap
    return band


def ribs(c: Canvas, a: Anatomy) -> None:
    """Posterior ribs (brighter; a fracture breaks one) and anterior ribs running down and in
    (fainter). Where the break visibly changes the posterior ribs is the Fracture region."""
    band = posterior_ribs(c, a, a.rib_fracture is not None)
    if a.rib_fracture is not None:
        change = 0.085 * (band - posterior_ribs(c, a, False)) * (0.6 + 0.4 * c.air)
        c.parts["fracture"] = c.visible(change).astype(np.float32)
    x = np.abs(c.u)
    w2 = c.v - 0.3 * c.lh * (1.0 - np.clip(x, 0.0, 1.0))
    index2 = (w2 - a.rib_phase - 0.3 * c.lh) / (1.15 * a.rib_spacing)
    phase2 = index2 - np.floor(index2)
    band2 = (ramp(0.2 - np.abs(phase2 - 0.2), 0.1) * (index2 >= 0) * (index2 < 7) * ramp(x - 0.3, 0.1)
             * ramp(1.02 - x, 0.05) * ramp(c.lh - c.v, 0.1 * c.lh))
    c.bone += 0.085 * band * (0.6 + 0.4 * c.air) + 0.035 * band2


def clavicles(c: Canvas, a: Anatomy) -> None:
    """S-shaped clavicles from the sternum up and out to the shoulders."""
    for side in (RIGHT, LEFT):
        x = side * c.u
        s = (x - 0.12) / 0.8
        center = c.lh * (a.clavicle_level + 0.06 - 0.13 * s + 0.025 * np.sin(2 * np.pi * s))
        band = ramp(0.032 * c.lh - np.abs(c.v - center), 0.012) * ramp(x - 0.12, 0.03) * ramp(0.95 - x, 0.05)
        c.bone += 0.13 * band


def humeral_heads(c: Canvas, a: Anatomy) -> None:
    """Shoulder joints at the upper corners (often cut off by the collimation)."""
    for side in (RIGHT, LEFT):
        c.bone += 0.14 * c.ellipse((side * (a.body_half_width - 0.05), -0.05 * c.lh), (0.15, 0.1 * c.lh), edge=0.04)


def lung_markings(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """Branching vessels, densest at the hila and tapering towards the periphery, over a fine
    parenchymal texture."""
    hilum_distance = np.sqrt((np.abs(c.u - a.shift) - 0.27) ** 2 + (c.v - 0.42 * c.lh) ** 2)
    vessel_tree(c, rng, hilum_distance)


def draw_frontal_anatomy(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A normal PA/AP chest, structure by structure."""
    body_outline(c, a)
    lungs(c, a)
    mediastinum(c, a)
    heart(c, a)
    hila(c, a)
    trachea(c, a)
    gastric_bubble(c, a)
    breasts(c, a)
    spine(c, a)
    ribs(c, a)
    clavicles(c, a)
    humeral_heads(c, a)
    lung_markings(c, a, rng)


# ---- findings drawn on a frontal film: one function per finding ------------------------------

def lobe_region(c: Canvas, side: int, zone: str, softness: float = 0.04, grow: float = 0.0) -> np.ndarray:
    """The part of one lung in a zone (upper: above the horizontal fissure level; middle:
    perihilar / middle lobe / lingula; lower: the bases), optionally `grow`n up and down."""
    low, high = ZONES[zone][0] - grow, ZONES[zone][1] + grow
    return c.lung[side] * ramp(c.v - low * c.lh, softness * c.lh) * ramp(high * c.lh - c.v, softness * c.lh)


def air_bronchograms(c: Canvas, side: int, patch: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Air-filled bronchi left visible inside an opacified lobe: dark branching lines."""
    inside = np.argwhere(patch > 0.6)
    if len(inside) == 0:
        return
    hilum = (side * 0.25, 0.45 * c.lh)
    tubes = np.zeros(c.shape, np.float32)
    for y, x in inside[rng.integers(0, len(inside), size=count)]:
        end = (float(c.u[y, x]), float(c.v[y, x]))
        mid = (0.5 * (hilum[0] + end[0]) + rng.uniform(-0.05, 0.05), 0.5 * (hilum[1] + end[1]))
        tubes = np.maximum(tubes, c.stroke([hilum, mid, end], 0.014))
    c.air = np.maximum(c.air, 0.55 * tubes * patch * c.lung[side])


def pleural_effusion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Fluid layering at the base: a meniscus climbing the lateral chest wall, the costophrenic
    angle blunted, the hemidiaphragm silhouette lost; height graded by severity."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        height = {1: 0.14, 2: 0.26, 3: 0.42}[f.severity] * c.lh * rng.uniform(0.85, 1.15)
        meniscus = (0.05 + 0.03 * f.severity) * c.lh * np.clip(g["x"], 0.0, 1.0) ** 3
        surface = g["costophrenic"] - height - meniscus
        fluid = ramp(c.v - surface, 0.05 * c.lh) * ramp(g["x"] - 0.02, 0.02) * ramp(1.06 - g["x"], 0.02)
        c.air *= 1.0 - 0.95 * fluid


def edema(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Bilateral perihilar (bat-wing) haze with indistinct vessels, and Kerley B septal lines at
    the lateral bases."""
    strength = {1: 0.32, 2: 0.45, 3: 0.6}[f.severity]
    haze = sum(c.blob((side * 0.34 + a.shift, 0.5 * c.lh), (0.48, 0.42 * c.lh)) for side in (RIGHT, LEFT))
    c.air *= 1.0 - strength * np.minimum(haze, 1.0)
    septal = np.zeros(c.shape, np.float32)
    for side in (RIGHT, LEFT):
        for _ in range(3 + 2 * f.severity):
            t = rng.uniform(0.62, 0.95)
            wall = 0.62 + 0.38 * t ** 0.45 - 0.01
            length, v = rng.uniform(0.05, 0.1), t * c.lh
            line = [(side * wall, v), (side * (wall - length), v + rng.uniform(-0.01, 0.01))]
            septal = np.maximum(septal, c.stroke(line, 0.012, smooth=False))
    c.air *= 1.0 - 0.6 * septal


def airspace_opacity(c: Canvas, f: Finding, rng: np.random.Generator, density: float,
                     coverage: dict[int, float], softness: float, bronchograms: int, grow: float = 0.0) -> None:
    """Shared by consolidation, pneumonia and lung opacity: a patch of a lobe whose air is
    replaced by fluid or cells."""
    for side in SIDES[f.side]:
        region = lobe_region(c, side, f.zone, softness=0.02 if f.zone == "upper" else 0.05, grow=grow)
        patch = patch_in(c, region, rng, coverage[f.severity], softness)
        c.air *= 1.0 - density * patch * (0.85 + 0.15 * np.tanh(c.noise(rng, 30)))
        if bronchograms:
            air_bronchograms(c, side, patch, rng, bronchograms)


def consolidation(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Dense lobar opacity filling most of a lobe, with air bronchograms, sharp at the fissure."""
    airspace_opacity(c, f, rng, density=0.95, coverage={1: 0.8, 2: 0.9, 3: 1.0}, softness=0.3, bronchograms=4,
                     grow=0.06)


def pneumonia(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Patchy airspace opacity in a lobe, with a few air bronchograms."""
    airspace_opacity(c, f, rng, density=0.7, coverage={1: 0.35, 2: 0.55, 3: 0.8}, softness=0.8, bronchograms=2)


def lung_opacity(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Ill-defined hazy opacity, no bronchograms."""
    airspace_opacity(c, f, rng, density=0.45, coverage={1: 0.25, 2: 0.4, 3: 0.6}, softness=1.2, bronchograms=0)


def atelectasis(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Plate-like (discoid) bands in the affected zone; a severe one collapses a lobe into a dense
    triangle. Volume loss is applied to the anatomy (lose_volume)."""
    low, high = ZONES[f.zone]
    for side in SIDES[f.side]:
        # The dome of this (raised) hemidiaphragm, as a fraction of lung height: bands and the
        # collapsed lobe are drawn above it, where there is lung to make opaque.
        dome = c.geometry[side]["dome"] / c.lh
        top = min(high - 0.12, dome - 0.06)
        bands = np.zeros(c.shape, np.float32)
        for _ in range(1 + (f.severity == 2)):
            t = rng.uniform(min(low + 0.08, top - 0.05), top)
            center, half, tilt = rng.uniform(0.35, 0.6), rng.uniform(0.22, 0.34), rng.uniform(-0.12, 0.12)
            ends = [(side * (center - half), t * c.lh - tilt * half), (side * (center + half), t * c.lh + tilt * half)]
            bands = np.maximum(bands, c.stroke(ends, {1: 0.09, 2: 0.1, 3: 0.1}[f.severity], smooth=False))
        bands = cv2.GaussianBlur(bands, (0, 0), 0.012 * c.pose.scale + 0.5)
        c.air *= 1.0 - 0.9 * bands * c.lung[side]
        if f.severity == 3:
            wedge = {"upper": [(0.12, 0.02), (0.75, 0.08), (0.15, 0.45)],
                     "middle": [(0.12, 0.45), (0.6, 0.6), (0.15, 0.82)],
                     "lower": [(0.08, 0.5), (0.18, 1.0), (0.5, 1.0)]}[f.zone]
            triangle = c.fill([(side * x, min(t, dome) * c.lh) for x, t in wedge], blur=0.02)
            c.air *= 1.0 - 0.9 * triangle * c.lung[side]


def pneumothorax(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Air in the pleural space at the apex and lateral wall: a lucent rim without lung markings,
    bounded by the thin white visceral pleural line; rim width graded by severity."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        rim_width = {1: 0.07, 2: 0.14, 3: 0.28}[f.severity] * rng.uniform(0.85, 1.15)
        reach = rim_width * np.clip(1.0 - 0.95 * c.v / c.lh, 0.05, 1.0)
        depth = np.minimum(g["lateral"] - g["x"], c.v - g["top"])
        rim = c.lung[side] * ramp(reach - depth, 0.01)
        line = c.lung[side] * ramp(0.007 - np.abs(depth - reach), 0.006) * (c.v < 0.85 * c.lh)
        c.vessels *= 1.0 - rim
        c.soft += 0.1 * line - 0.05 * rim


def lung_lesion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """A well-defined, slightly lobulated nodule (or, when severe, a mass) in the given zone."""
    low, high = ZONES[f.zone]
    for side in SIDES[f.side]:
        radius = LESION_RADIUS[f.severity]
        center = (side * rng.uniform(0.3, 0.7), rng.uniform(low + 0.08, min(high, 0.92) - 0.05) * c.lh)
        du, dv = c.u - center[0], c.v - center[1]
        r = np.sqrt(du * du + dv * dv) / (radius * (1.0 + 0.12 * np.sin(3.0 * np.arctan2(dv, du) + rng.uniform(0, 6))))
        c.air *= 1.0 - 0.9 * ramp(1.0 - r, 0.25) * c.lung[side]


def pleural_thickening(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Pleural Other: a band of thickened pleura along the lateral wall and an apical cap."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        thickness = 0.02 + 0.015 * f.severity
        band = ramp(thickness - np.minimum(g["lateral"] - g["x"], c.v - g["top"]), 0.01) * (c.v < 0.8 * c.lh)
        c.air *= 1.0 - 0.85 * band * c.lung[side]


# ---- support devices -------------------------------------------------------------------------

def endotracheal_tube(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A tube down the trachea with a radiopaque stripe, tip a few cm above the carina."""
    tx = 1.2 * a.shift + rng.uniform(-0.01, 0.01)
    c.metal += 0.3 * c.stroke([(tx, -0.7 * c.lh), (tx, rng.uniform(0.1, 0.22) * c.lh)], 0.022, smooth=False)


def enteric_tube(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A nasogastric tube down the oesophagus, through the diaphragm, into the stomach."""
    dome = c.geometry[LEFT]["dome"]
    path = [(0.02, -0.7 * c.lh), (0.04, 0.4 * c.lh), (0.1, dome), (0.3, dome + 0.14 * c.lh),
            (0.5, dome + rng.uniform(0.05, 0.15) * c.lh)]
    c.metal += 0.28 * c.stroke(path, 0.018)


def central_line(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A central venous catheter from the right subclavian or jugular vein to the SVC."""
    start = (-0.85, 0.02 * c.lh) if rng.random() < 0.5 else (-0.3, -0.5 * c.lh)
    path = [start, (-0.35, 0.08 * c.lh), (-0.12, 0.2 * c.lh), (-0.09, rng.uniform(0.38, 0.5) * c.lh)]
    c.metal += 0.3 * c.stroke(path, 0.014)


def pacemaker(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A pulse generator under the left clavicle with leads to the right atrium and ventricle."""
    gx, gy = rng.uniform(0.5, 0.7), rng.uniform(0.02, 0.12) * c.lh
    box = [(gx - 0.12, gy - 0.07), (gx + 0.12, gy - 0.07), (gx + 0.12, gy + 0.07), (gx - 0.12, gy + 0.07)]
    c.metal += 0.9 * c.fill(box, blur=0.01)
    hx, hy, hw, hh = c.heart
    leads = c.stroke([(gx - 0.1, gy), (0.15, 0.12 * c.lh), (-0.08, 0.35 * c.lh), (-0.1, hy - 0.2 * hh)], 0.012)
    leads = np.maximum(leads, c.stroke([(gx - 0.1, gy + 0.02), (0.1, 0.15 * c.lh), (-0.05, 0.4 * c.lh),
                                        (hx + 0.3 * hw, hy + 0.4 * hh)], 0.012))
    c.metal += 0.5 * leads


def chest_tube(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A pleural drain entering low on the lateral wall and running up to the apex."""
    side = RIGHT if rng.random() < 0.6 else LEFT
    c.metal += 0.3 * c.stroke([(side * 1.1, 0.85 * c.lh), (side * 0.85, 0.6 * c.lh), (side * 0.55, 0.15 * c.lh)], 0.028)


def stent(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A short metallic mesh tube over the heart (coronary or vascular stent)."""
    hx, hy, hw, hh = c.heart
    x0, y0 = hx + rng.uniform(-0.3, 0.3) * hw, hy - rng.uniform(0.0, 0.4) * hh
    mesh = sum(c.stroke([(x0 + dx, y0), (x0 + dx + 0.03, y0 + 0.12)], 0.008, smooth=False) for dx in (-0.02, 0.0, 0.02))
    c.metal += 0.5 * np.minimum(mesh, 1.0)


def surgical_clips(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A few small metallic clips clustered near a hilum or the mediastinum."""
    cx, cy = rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.7) * c.lh
    for _ in range(int(rng.integers(3, 7))):
        x, y = cx + rng.normal(0, 0.06), cy + rng.normal(0, 0.06)
        angle = rng.uniform(0, np.pi)
        c.metal += 0.8 * c.stroke([(x, y), (x + 0.035 * math.cos(angle), y + 0.035 * math.sin(angle))], 0.012,
                                  smooth=False)


DEVICE_DRAWERS = {"endotracheal_tube": endotracheal_tube, "enteric_tube": enteric_tube,
                  "central_line": central_line, "pacemaker": pacemaker, "chest_tube": chest_tube,
                  "stent": stent, "surgical_clips": surgical_clips}


def support_devices(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """The finding's device, plus another one for a more instrumented (severity 3) patient."""
    DEVICE_DRAWERS[f.device or "central_line"](c, a, rng)
    if f.severity == 3:
        DEVICE_DRAWERS[str(rng.choice(COMMON_DEVICES))](c, a, rng)


FRONTAL_FINDINGS = {
    "Pleural Effusion": pleural_effusion, "Edema": edema, "Consolidation": consolidation,
    "Pneumonia": pneumonia, "Lung Opacity": lung_opacity, "Atelectasis": atelectasis,
    "Pneumothorax": pneumothorax, "Lung Lesion": lung_lesion, "Pleural Other": pleural_thickening,
    "Support Devices": support_devices,
}
