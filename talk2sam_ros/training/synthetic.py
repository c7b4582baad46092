"""Synthetic thin-object dataset: cables, wires, ropes, fences and antennas over real backgrounds.

Real thin-object datasets cannot be shipped (non-commercial licences) and nothing can be
downloaded here, so tests, the demo and the CPU smoke training use this generator. Each image
holds one *target* object whose category is the prompt text, optionally plus distractor objects of
other categories drawn into the image but not into the mask: a box around the target then often
contains a distractor, which is the ambiguity the text prompt resolves.

Backgrounds are random crops of scikit-image's bundled CC0/public-domain images (no download) or
procedural textures (multi-octave value noise, gradients, stripes, checkers). Objects are drawn as
anti-aliased polylines 1-8 px wide with per-object colour, a lighter centre highlight (cylindrical
shading) and, for ropes, a braid pattern. The GT mask is the drawn coverage > 50 %.

Folder layout written by :func:`generate_synthetic_dataset` (the ``folder`` kind in
``talk2sam_ros.training.data``)::

    <out_dir>/meta.json                  generator parameters, seed, counts per split/category
    <out_dir>/<split>/images/<stem>.png  H x W RGB, lossless (JPEG would blur 1 px wires)
    <out_dir>/<split>/masks/<stem>.png   H x W uint8 0/255 target mask
    <out_dir>/<split>/categories.csv     stem,category (the text prompt of each image)

with ``stem = <category>_<5-digit index>`` so the filename rule alone also yields the category.
Use the splits as dataset specs ``folder:<out_dir>:train`` and ``folder:<out_dir>:val``.
Generation is deterministic: image i depends only on (seed, i).
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

LOG = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("cable", "wire", "rope", "fence", "antenna")
# scikit-image images bundled with the wheel (the others need a download).
SKIMAGE_BACKGROUNDS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
    "cell", "colorwheel")

Painter = Callable[[np.random.Generator, int, int], list[tuple[np.ndarray, int]]]


# --------------------------------------------------------------------------- backgrounds
def load_backgrounds(names: Sequence[str] = SKIMAGE_BACKGROUNDS) -> list[np.ndarray]:
    """The bundled scikit-image images as H x W x 3 uint8 RGB (missing ones skipped)."""
    import skimage.data

    out = []
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # a build without that file: skip it, never download
            LOG.debug("skimage background %s unavailable: %s", name, exc)
            continue
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float32) / max(1e-6, float(img.max())))).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3]))
    return out


def _value_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    acc = np.zeros((h, w), np.float32)
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        acc += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) / (2 ** o)
    acc -= acc.min()
    return acc / max(1e-6, float(acc.max()))


def procedural_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H x W x 3 uint8: coloured noise, gradient, stripes or checkers."""
    kind = rng.integers(4)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == 0:
        t = _value_noise(rng, h, w)
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == 2:
        period = rng.uniform(6, 40)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = 0.5 + 0.5 * np.sin((xx + 0.3 * yy) * 2 * np.pi / period)
    else:
        size = int(rng.integers(8, 48))
        yy, xx = np.mgrid[0:h, 0:w]
        t = (((yy // size) + (xx // size)) % 2).astype(np.float32)
        t = cv2.GaussianBlur(t, (0, 0), 1.0)
    t = 0.7 * t + 0.3 * _value_noise(rng, h, w, 3)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    return img.clip(0, 255).astype(np.uint8)


def random_background(rng: np.random.Generator, h: int, w: int,
                      images: Sequence[np.ndarray], photo_prob: float = 0.6) -> np.ndarray:
    """A random crop (with random scale and flip) of a photo, or a procedural texture."""
    if not images or rng.random() >= photo_prob:
        return procedural_texture(rng, h, w)
    src = images[int(rng.integers(len(images)))]
    sh, sw = src.shape[:2]
    scale = rng.uniform(0.5, 1.0) * min(sh / h, sw / w)
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    ch, cw = min(ch, sh), min(cw, sw)
    top, left = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = cv2.resize(src[top:top + ch, left:left + cw], (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


# --------------------------------------------------------------------------- shapes
def _smooth_curve(rng: np.random.Generator, h: int, w: int, n_ctrl: int = 4,
                  samples: int = 200) -> np.ndarray:
    """(samples, 2) float xy points of a random Catmull-Rom curve crossing much of the image."""
    margin = 0.05
    start = rng.uniform(margin, 1 - margin, 2)
    end = rng.uniform(margin, 1 - margin, 2)
    while np.linalg.norm(end - start) < 0.5:
        end = rng.uniform(margin, 1 - margin, 2)
    t = np.linspace(0, 1, n_ctrl)[:, None]
    axis = end - start
    perp = np.array([-axis[1], axis[0]]) / np.linalg.norm(axis)
    # bend only across the start-end axis: the curve sags and waves but never folds back
    bend = rng.normal(0, 0.12, (n_ctrl, 1)) * (0 < t) * (t < 1)
    ctrl = start + t * axis + bend * perp
    ctrl = np.clip(ctrl, 0.0, 1.0) * [w - 1, h - 1]
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    pts = []
    per = max(2, samples // (len(ctrl) - 1))
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        s = np.linspace(0, 1, per, endpoint=False)[:, None]
        pts.append(0.5 * ((2 * p1) + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * s ** 3))
    pts.append(ctrl[-1:])
    return np.vstack(pts)


def _paint_cable(rng: np.random.Generator, h: int, w: int) -> list[tuple[np.ndarray, int]]:
    return [(_smooth_curve(rng, h, w), int(rng.integers(3, 9)))]


def _paint_wire(rng: np.random.Generator, h: int, w: int) -> list[tuple[np.ndarray, int]]:
    width = int(rng.integers(1, 3))
    strands = int(rng.integers(1, 3))
    return [(_smooth_curve(rng, h, w, n_ctrl=3), width) for _ in range(strands)]


def _paint_rope(rng: np.random.Generator, h: int, w: int) -> list[tuple[np.ndarray, int]]:
    return [(_smooth_curve(rng, h, w, n_ctrl=5), int(rng.integers(4, 9)))]


def _paint_fence(rng: np.random.Generator, h: int, w: int) -> list[tuple[np.ndarray, int]]:
    """A grid patch: vertical posts plus horizontal rails, or a diagonal chain-link lattice."""
    x0, x1 = sorted(rng.uniform(0.05, 0.95, 2) * (w - 1))
    y0, y1 = sorted(rng.uniform(0.05, 0.95, 2) * (h - 1))
    if x1 - x0 < 0.3 * w:
        x0, x1 = 0.1 * w, 0.9 * w
    if y1 - y0 < 0.3 * h:
        y0, y1 = 0.2 * h, 0.8 * h
    width = int(rng.integers(1, 4))
    step = rng.uniform(8, 24)
    lines = []
    if rng.random() < 0.5:
        for x in np.arange(x0, x1 + 1e-3, step):
            lines.append((np.array([[x, y0], [x, y1]]), width))
        for y in np.linspace(y0, y1, int(rng.integers(2, 4))):
            lines.append((np.array([[x0, y], [x1, y]]), width))
    else:
        span = (y1 - y0)
        for x in np.arange(x0 - span, x1, step):
            a, b = np.array([x, y0]), np.array([x + span, y1])
            lines.append((_clip_segment(a, b, x0, x1), width))
            a, b = np.array([x, y1]), np.array([x + span, y0])
            lines.append((_clip_segment(a, b, x0, x1), width))
        lines = [ln for ln in lines if ln[0] is not None]
    return lines


def _clip_segment(a: np.ndarray, b: np.ndarray, x0: float, x1: float) -> np.ndarray | None:
    """Clip segment a-b to x0 <= x <= x1 (None when nothing is left)."""
    t0, t1 = 0.0, 1.0
    dx = b[0] - a[0]
    if abs(dx) < 1e-9:
        return np.stack([a, b]) if x0 <= a[0] <= x1 else None
    for edge, sign in ((x0, 1), (x1, -1)):
        t = (edge - a[0]) / dx
        if sign * dx > 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    if t0 >= t1:
        return None
    return np.stack([a + t0 * (b - a), a + t1 * (b - a)])


def _paint_antenna(rng: np.random.Generator, h: int, w: int) -> list[tuple[np.ndarray, int]]:
    """A mast with crossbars (TV antenna) or a whip with a few diagonal elements."""
    cx = rng.uniform(0.2, 0.8) * w
    top, bottom = rng.uniform(0.05, 0.3) * h, rng.uniform(0.7, 0.98) * h
    mast_w = int(rng.integers(2, 5))
    lines = [(np.array([[cx, top], [cx, bottom]]), mast_w)]
    n_bars = int(rng.integers(3, 7))
    half = rng.uniform(0.1, 0.3) * w
    for i, y in enumerate(np.linspace(top, top + 0.45 * (bottom - top), n_bars)):
        length = half * (1 - 0.5 * i / n_bars)
        tilt = rng.uniform(-0.15, 0.15) * length
        lines.append((np.array([[cx - length, y + tilt], [cx + length, y - tilt]]),
                      int(rng.integers(1, 3))))
    return lines


PAINTERS: dict[str, Painter] = {
    "cable": _paint_cable, "wire": _paint_wire, "rope": _paint_rope, "fence": _paint_fence,
    "antenna": _paint_antenna,
}


def _rasterize(strokes: list[tuple[np.ndarray, int]], h: int, w: int, braid: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """Coverage alpha and highlight (both H x W float32 in [0, 1]) of anti-aliased strokes."""
    ss = 4  # supersampling: exact-ish coverage for 1 px strokes
    alpha = np.zeros((h * ss, w * ss), np.uint8)
    high = np.zeros_like(alpha)
    for pts, width in strokes:
        poly = np.round(pts * ss + (ss - 1) / 2).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(alpha, [poly], False, 255, thickness=max(1, width * ss),
                      lineType=cv2.LINE_8)
        if width >= 2:
            hw = max(1, (width * ss) // 3)
            if braid:
                seg = max(2, width * ss)
                for i in range(0, len(poly) - 1, 2):
                    a, b = poly[i, 0], poly[min(i + 1, len(poly) - 1), 0]
                    d = np.array([-(b - a)[1], (b - a)[0]], np.float32)
                    d = d / max(1e-6, float(np.linalg.norm(d))) * seg / 3
                    cv2.line(high, tuple(int(v) for v in a - d), tuple(int(v) for v in a + d),
                             255, hw)
            else:
                cv2.polylines(high, [poly], False, 255, thickness=hw, lineType=cv2.LINE_8)
    a = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    hl = cv2.resize(high, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return a, np.minimum(hl, a)


def _composite(img: np.ndarray, alpha: np.ndarray, high: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    dark = rng.random() < 0.6
    base = rng.integers(0, 90, 3) if dark else rng.integers(120, 256, 3)
    shade = 1.0 + 0.25 * (_value_noise(rng, *alpha.shape, 2) - 0.5)
    colour = base[None, None].astype(np.float32) * shade[..., None]
    colour = colour + high[..., None] * (80.0 if dark else 50.0)
    a = alpha[..., None]
    return (img.astype(np.float32) * (1 - a) + colour * a).clip(0, 255).astype(np.uint8)


def render_sample(rng: np.random.Generator, size: tuple[int, int], category: str,
                  backgrounds: Sequence[np.ndarray], distractor_prob: float = 0.5,
                  categories: Sequence[str] = CATEGORIES, min_pixels: int = 30
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One (H x W x 3 uint8 image, H x W bool mask of the ``category`` object)."""
    h, w = size
    img = random_background(rng, h, w, backgrounds)
    others = [c for c in categories if c != category]
    n_distract = int(rng.integers(1, 3)) if others and rng.random() < distractor_prob else 0
    order = [category] + [others[int(rng.integers(len(others)))] for _ in range(n_distract)]
    rng.shuffle(order)
    mask = np.zeros((h, w), bool)
    for cat in order:
        for _ in range(10):  # redraw a target that came out too small
            alpha, high = _rasterize(PAINTERS[cat](rng, h, w), h, w, braid=cat == "rope")
            if cat != category or (alpha > 0.5).sum() >= min_pixels:
                break
        img = _composite(img, alpha, high, rng)
        drawn = alpha > 0.5
        mask = drawn if cat == category else mask & ~drawn  # occluders cut the target
    return img, mask


def generate_synthetic_dataset(out_dir: str | Path, n: int = 64, seed: int = 0,
                               image_size: int | tuple[int, int] = 256,
                               val_fraction: float = 0.25,
                               categories: Sequence[str] = CATEGORIES,
                               distractor_prob: float = 0.5, progress: bool = True,
                               overwrite: bool = False) -> Path:
    """Write ``n`` images (split into ``train``/``val``) to ``out_dir``; returns ``out_dir``.

    The first ``round(n * (1 - val_fraction))`` indices form ``train``, the rest ``val``;
    categories cycle so every category appears in both splits when n is large enough.
    An existing dataset with the same parameters is reused unless ``overwrite``.
    """
    unknown = [c for c in categories if c not in PAINTERS]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; available {sorted(PAINTERS)}")
    if n < 2:
        raise ValueError(f"n must be >= 2 (one train and one val image), got {n}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    out = Path(out_dir)
    params = {"n": n, "seed": seed, "image_size": [h, w], "val_fraction": val_fraction,
              "categories": list(categories), "distractor_prob": distractor_prob,
              "version": 1}
    meta_path = out / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("params") == params \
            and not overwrite:
        LOG.info("reusing synthetic dataset in %s", out)
        return out
    marker = out / ".generating"  # present from the start until meta.json is written
    stale = [out / s for s in ("train", "val") if (out / s).exists()]
    if stale and not overwrite and not marker.is_file():
        raise FileExistsError(f"{out} already holds a different dataset ({stale[0]}); pass "
                              "overwrite=True or another out_dir")
    if marker.is_file():
        LOG.info("%s: completing an interrupted generation from scratch", out)
    for folder in stale:  # only the split folders this function writes
        shutil.rmtree(folder)
    meta_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(params))
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    n_train = n - n_val
    backgrounds = load_backgrounds()
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for split in rows:
        for sub in ("images", "masks"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc="synthetic data", disable=not progress, unit="img"):
        split = "train" if i < n_train else "val"
        cat = categories[i % len(categories)]
        rng = np.random.default_rng([seed, i])
        img, mask = render_sample(rng, (h, w), cat, backgrounds, distractor_prob, categories)
        stem = f"{cat}_{i:05d}"
        cv2.imwrite(str(out / split / "images" / f"{stem}.png"), img[..., ::-1])
        cv2.imwrite(str(out / split / "masks" / f"{stem}.png"), mask.astype(np.uint8) * 255)
        rows[split].append((stem, cat))
        counts[split][cat] = counts[split].get(cat, 0) + 1
    for split, split_rows in rows.items():
        with (out / split / "categories.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["stem", "category"])
            writer.writerows(split_rows)
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"params": params, "counts": counts,
                               "backgrounds": len(backgrounds)}, indent=2))
    tmp.replace(meta_path)  # written last: a half-written dataset is never "reused"
    marker.unlink()
    return out
