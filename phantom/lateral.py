"""Lateral view: the normal chest seen from the side, and the findings that show on it
(pneumothorax, fracture and pleural thickening are not drawn laterally). Anterior is to the
image left, u = 0 at mid-depth, in the frontal view's units."""
from __future__ import annotations

import math

import numpy as np

from .canvas import LEFT, LESION_RADIUS, RIGHT, SIDES, Anatomy, Canvas, patch_in, ramp, vessel_tree
from .labels import Finding

# ---- lateral anatomy: one function per structure ---------------------------------------------

def lateral_body(c: Canvas, a: Anatomy) -> None:
    """The trunk seen from the side (the beam crosses its full width: dense), and the raised arms
    over the upper chest."""
    depth = a.ap_depth * 1.3
    c.soft += 0.55 * np.sqrt(np.clip(1.0 - (c.u / depth) ** 2, 0.0, 1.0)) ** 0.3 * ramp(c.v + 0.6 * c.lh, 0.2)
    c.soft += 0.1 * c.blob((0.1, -0.1 * c.lh), (0.9, 0.35 * c.lh))


def lateral_lungs(c: Canvas, a: Anatomy) -> None:
    """Both lungs superimposed, bell-shaped (narrow apex, deep base), each with its own
    hemidiaphragm, lowest in the posterior costophrenic sulcus; the right dome sits higher, so
    two domes show."""
    depth = a.ap_depth
    s = (c.u + depth) / (2 * depth)  # 0 anterior, 1 posterior
    t = np.sqrt(np.clip(c.v / c.lh, 0.0, 1.0))
    front, back = -0.92 * depth * (0.45 + 0.55 * t), 0.95 * depth * (0.6 + 0.4 * t)
    for side in (RIGHT, LEFT):
        raise_ = (a.raise_right + a.right_dome_raise) if side == RIGHT else a.raise_left
        diaphragm = c.lh * (0.8 + 0.2 * s ** 2 - raise_)
        mask = (ramp(c.u - front, 0.02) * ramp(back - c.u, 0.02) * ramp(c.v - 0.03 * c.lh, 0.03)
                * ramp(diaphragm - c.v, 0.012))
        c.lung[side] = mask
        c.geometry[side] = {"s": s}
        c.air += 0.5 * mask


def lateral_heart(c: Canvas, a: Anatomy) -> None:
    """The heart in the anterior-inferior chest against the lower sternum, its long axis tilted
    down and forwards; it grows backwards over the retrocardiac space when enlarged. The whole
    ellipse is the Cardiomegaly region."""
    grow = a.ctr / 0.45
    depth = a.ap_depth
    major, minor = 0.62 * depth * grow, 0.13 * c.lh * grow ** 0.5
    center = (-0.45 * depth + 0.75 * major, c.lh * (0.84 - a.dome_height) - 0.6 * minor)
    tilt = math.radians(25.0)
    du, dv = c.u - center[0], c.v - center[1]
    along = du * math.cos(tilt) + dv * math.sin(tilt)
    across = -du * math.sin(tilt) + dv * math.cos(tilt)
    mask = ramp(1.0 - np.sqrt((along / major) ** 2 + (across / minor) ** 2), 0.03 / minor)
    c.heart = (center[0], center[1], major, minor)
    c.parts["heart"] = mask
    c.air *= 1.0 - mask
    c.soft += 0.04 * mask


def lateral_great_vessels(c: Canvas, a: Anatomy) -> None:
    """The aortic arch over the top of the heart and the descending aorta along the spine, and
    the hilum in the middle."""
    d = a.ap_depth
    aorta = c.stroke([(-0.3 * d, 0.45 * c.lh), (-0.2 * d, 0.18 * c.lh), (0.2 * d, 0.14 * c.lh),
                      (0.42 * d, 0.3 * c.lh), (0.42 * d, 0.95 * c.lh)], 0.09 * (1.0 + 2.0 * a.aortic_knob))
    c.air *= 1.0 - 0.25 * aorta
    c.soft += 0.08 * c.blob((0.0, 0.45 * c.lh), (0.12, 0.1 * c.lh))


def lateral_trachea(c: Canvas, a: Anatomy) -> None:
    """The trachea running down and back to the carina."""
    d = a.ap_depth
    c.soft -= 0.08 * c.stroke([(-0.3 * d, -0.6 * c.lh), (0.02 * d, 0.4 * c.lh)], 0.07, smooth=False)


def lateral_spine(c: Canvas, a: Anatomy) -> None:
    """Vertebral bodies stacked behind the lungs with a gentle kyphosis, posterior elements behind."""
    d = a.ap_depth
    center = 0.55 * d + 0.08 * d * np.sin(np.pi * c.v / (1.3 * c.lh))
    level = (c.v / (c.lh / 10.0)) % 1.0
    discs = 0.6 + 0.4 * ramp(0.38 - np.abs(level - 0.5), 0.06)
    bodies = ramp(0.16 * d - np.abs(c.u - center), 0.02) * discs
    posterior = ramp(0.12 * d - np.abs(c.u - center - 0.32 * d), 0.05)
    c.bone += (0.14 * bodies + 0.06 * posterior) * ramp(c.v + 0.5 * c.lh, 0.1)


def sternum(c: Canvas, a: Anatomy) -> None:
    """The sternum along the anterior chest wall."""
    d = a.ap_depth
    c.bone += (0.1 * ramp(0.035 - np.abs(c.u + 1.0 * d), 0.015) * ramp(c.v - 0.05 * c.lh, 0.03)
               * ramp(0.75 * c.lh - c.v, 0.03))


def lateral_ribs(c: Canvas, a: Anatomy) -> None:
    """Faint oblique rib shadows, both sides superimposed."""
    index = (c.v + 0.45 * c.u) / a.rib_spacing
    phase = index - np.floor(index)
    c.bone += 0.03 * ramp(0.2 - np.abs(phase - 0.2), 0.1) * (c.air > 0.1)


def lateral_markings(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """Branching vessels around the hilum."""
    vessel_tree(c, rng, np.sqrt(c.u ** 2 + (c.v - 0.45 * c.lh) ** 2))


def draw_lateral_anatomy(c: Canvas, a: Anatomy, rng: np.random.Generator) -> None:
    """A normal lateral chest, structure by structure."""
    lateral_body(c, a)
    lateral_lungs(c, a)
    lateral_heart(c, a)
    lateral_great_vessels(c, a)
    lateral_trachea(c, a)
    lateral_spine(c, a)
    sternum(c, a)
    lateral_ribs(c, a)
    lateral_markings(c, a, rng)


# ---- findings on the lateral view (pneumothorax, fracture and pleural thickening are not drawn) -

LATERAL_ZONE_CENTERS = {"upper": (0.1, 0.25), "middle": (-0.5, 0.62), "lower": (0.55, 0.85)}  # (x depth, x lung height)


def lateral_region(c: Canvas, a: Anatomy, f: Finding, size: float) -> np.ndarray:
    cu, cv = LATERAL_ZONE_CENTERS[f.zone]
    return np.minimum(c.air, 1.0) * c.blob((cu * a.ap_depth, cv * c.lh), (size, size * c.lh))


def lateral_effusion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Fluid filling the posterior costophrenic sulcus, its meniscus climbing the back wall."""
    for side in SIDES[f.side]:
        g = c.geometry[side]
        height = {1: 0.1, 2: 0.22, 3: 0.4}[f.severity] * c.lh * rng.uniform(0.85, 1.15)
        surface = c.lh * 1.0 - height * (0.4 + 0.9 * g["s"] ** 2)
        c.air -= 0.5 * 0.95 * ramp(c.v - surface, 0.05 * c.lh) * c.lung[side]
    np.clip(c.air, 0.0, None, out=c.air)


def lateral_edema(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Haze around the hilum."""
    c.air *= 1.0 - {1: 0.3, 2: 0.45, 3: 0.62}[f.severity] * c.blob((0.0, 0.5 * c.lh), (0.45, 0.35 * c.lh))


def lateral_opacity(density: float, size: float, coverage: dict[int, float]):
    """A lateral-view drawer for an airspace opacity of this density in the finding's zone."""
    def draw(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
        region = lateral_region(c, a, f, size)
        c.air *= 1.0 - density * patch_in(c, region, rng, coverage[f.severity], 0.5)
    draw.__doc__ = f"Airspace opacity of density {density} in the zone of the finding."
    return draw


def lateral_atelectasis(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """A plate-like band across the zone (a collapsed lobe when severe)."""
    cu, cv = LATERAL_ZONE_CENTERS[f.zone]
    x, y = cu * a.ap_depth, cv * c.lh
    band = c.stroke([(x - 0.3, y + 0.05), (x + 0.3, y - 0.08)], 0.06 if f.severity < 3 else 0.16, smooth=False)
    c.air *= 1.0 - 0.85 * band * np.minimum(c.air * 2, 1.0)


def lateral_lesion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """The nodule or mass, seen end on."""
    cu, cv = LATERAL_ZONE_CENTERS[f.zone]
    radius = LESION_RADIUS[f.severity]
    c.air *= 1.0 - 0.9 * c.ellipse((cu * a.ap_depth + rng.uniform(-0.1, 0.1), cv * c.lh), (radius, radius), edge=0.01)


def lateral_mediastinum(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Enlarged cardiomediastinum: the retrosternal clear space filled in."""
    d = a.ap_depth
    fill = c.fill([(-0.95 * d, 0.1 * c.lh), (-0.2 * d, 0.12 * c.lh), (-0.3 * d, 0.55 * c.lh), (-0.95 * d, 0.6 * c.lh)],
                  blur=0.05)
    c.air *= 1.0 - {1: 0.4, 2: 0.6, 3: 0.8}[f.severity] * fill


def lateral_devices(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    """Tubes and lines as seen from the side; a pacemaker generator in front of the chest."""
    d, lh = a.ap_depth, c.lh
    hx, hy, hw, hh = c.heart
    paths = {"endotracheal_tube": [(-0.3 * d, -0.7 * lh), (-0.02 * d, 0.2 * lh)],
             "enteric_tube": [(-0.1 * d, -0.7 * lh), (0.25 * d, 0.5 * lh), (0.1 * d, 1.05 * lh), (-0.2 * d, 1.15 * lh)],
             "central_line": [(-0.5 * d, -0.3 * lh), (-0.3 * d, 0.1 * lh), (-0.25 * d, 0.45 * lh)],
             "chest_tube": [(0.9 * d, 0.95 * lh), (0.6 * d, 0.5 * lh), (0.3 * d, 0.15 * lh)],
             "pacemaker": [(-1.05 * d, 0.08 * lh), (-0.4 * d, 0.2 * lh), (hx, hy + 0.3 * hh)],
             "stent": [(hx - 0.03, hy - 0.05), (hx + 0.03, hy + 0.07)],
             "surgical_clips": [(0.0, 0.45 * lh), (0.03, 0.48 * lh)]}
    device = f.device or "central_line"
    c.metal += 0.35 * c.stroke(paths[device], 0.02 if device != "chest_tube" else 0.03)
    if device == "pacemaker":
        c.metal += 0.9 * c.ellipse((-1.1 * d, 0.08 * lh), (0.05, 0.1), edge=0.01)


LATERAL_FINDINGS = {
    "Pleural Effusion": lateral_effusion, "Edema": lateral_edema,
    "Consolidation": lateral_opacity(0.9, 0.35, {1: 0.5, 2: 0.75, 3: 0.95}),
    "Pneumonia": lateral_opacity(0.7, 0.35, {1: 0.35, 2: 0.55, 3: 0.8}),
    "Lung Opacity": lateral_opacity(0.55, 0.35, {1: 0.3, 2: 0.5, 3: 0.75}),
    "Atelectasis": lateral_atelectasis, "Lung Lesion": lateral_lesion,
    "Enlarged Cardiomediastinum": lateral_mediastinum, "Support Devices": lateral_devices,
}
