"""Thin-object segmentation datasets: (image, category text, GT mask, box prompts) samples.

No ROS and no model imports: images stay uint8 RGB at their source resolution and the model core's
``transforms`` does every resize/pad/normalise later.

Supported on-disk layouts (``kind`` in a dataset spec) and their filename -> category rules
(documented in docs/training.md; a CSV ``stem,category`` overrides the rule per file):

``thinobject5k``  ``root/images/<stem>.jpg``, ``root/masks/<stem>.png``, ``root/list/<split>.txt``
    (thin-object-selection layout, split ``trainval``/``test``; ``train`` = ``trainval``), or the
    SAM-HQ layout ``root/images_<split>/``, ``root/masks_<split>/`` (split ``train``/``test``).
    Category: the stem's words without numeric / ``PNG1234`` tokens (``bicycle_PNG5380`` ->
    ``bicycle``). Unverified against the archive, hence the CSV override.
``dis5k``  ``root/<split>/im/<stem>.jpg``, ``root/<split>/gt/<stem>.png`` with split ``DIS-TR``,
    ``DIS-VD``, ``DIS-TE1`` .. ``DIS-TE4`` (aliases ``train``, ``val``, ``test`` = all four TE).
    Stem ``<groupIdx>#<Group>#<classIdx>#<Class>#<origId>``: the category is field 3 split on
    ``#`` (``7#Electrical#1#Cable#31424`` -> ``cable``).
``big``  ``root/<split>/<stem>_im.jpg`` + ``<stem>_gt.png`` (split ``val``/``test``; a root that
    directly holds the files needs no split). Category: the stem after the leading Flickr id tokens
    (``11083112904_5d97c7f8e1_o_sofa`` -> ``sofa``).
``folder``  ``root/<split>/images/<stem>.{jpg,png}``, ``root/<split>/masks/<stem>.png`` and an
    optional ``root/<split>/categories.csv``; the generic layout the synthetic generator writes.
    Category without CSV: the stem's words without numeric tokens (``cable_00012`` -> ``cable``).

Category text is normalised the same way everywhere: CamelCase and ``_``/``-`` become spaces,
lower case (``Tennis-Racket`` / ``TennisRacket`` -> ``tennis racket``).

A dataset spec string names one dataset split: ``kind:root[:split][?key=value&...]`` with keys
``categories`` (CSV override), ``exclude`` (list file of categories or stems to drop, e.g. the
non-thin DIS5K classes) and ``limit`` (first N samples after sorting, for quick runs).
"""
from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

LOG = logging.getLogger(__name__)

KINDS = ("thinobject5k", "dis5k", "big", "folder")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DIS_SPLITS = ("DIS-TR", "DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")
DIS_ALIASES = {"train": ("DIS-TR",), "val": ("DIS-VD",), "test": DIS_SPLITS[2:]}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOISE_TOKEN = re.compile(r"^(\d+|png\d*|img\d*|image\d*|copy)$", re.IGNORECASE)
_FLICKR_TOKEN = re.compile(r"^(\d+|[0-9a-f]*\d[0-9a-f]*|o)$")


# --------------------------------------------------------------------------- categories
def normalize_category(text: str) -> str:
    """'TennisRacket' / 'tennis_racket' / ' Tennis-Racket ' -> 'tennis racket'."""
    spaced = _CAMEL.sub(" ", text.strip())
    return " ".join(re.split(r"[\s_\-]+", spaced)).strip().lower()


def _words_without_noise(stem: str) -> str:
    words = [w for w in re.split(r"[\s_\-]+", stem) if w and not _NOISE_TOKEN.match(w)]
    return normalize_category(" ".join(words))


def category_from_filename(kind: str, stem: str) -> str:
    """The per-dataset filename rule (empty string when the rule finds nothing)."""
    if kind == "dis5k":
        fields = stem.split("#")
        return normalize_category(fields[3]) if len(fields) >= 5 else ""
    if kind == "big":
        tokens = stem.split("_")
        while tokens and _FLICKR_TOKEN.match(tokens[0]):
            tokens.pop(0)
        return normalize_category(" ".join(tokens))
    if kind in ("thinobject5k", "folder"):
        return _words_without_noise(stem)
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")


def load_category_csv(path: str | Path) -> dict[str, str]:
    """CSV with a header and columns ``stem``/``filename`` and ``category``: stem -> category."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"category CSV not found: {path}")
    # utf-8-sig: spreadsheet programs put a byte-order mark before the header
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip() for c in reader.fieldnames or ()}
        key = "stem" if "stem" in cols else "filename" if "filename" in cols else None
        if key is None or "category" not in cols:
            raise ValueError(f"{path}: need columns 'stem' (or 'filename') and 'category', "
                             f"got {sorted(cols)}")
        out = {}
        for row in reader:  # short rows give None for the missing cells: skipped
            row = {(k or "").strip(): v.strip() if isinstance(v, str) else ""
                   for k, v in row.items()}
            if row.get(key) and row.get("category"):
                out[Path(row[key]).stem] = row["category"]
        return out


def load_exclude_list(path: str | Path) -> set[str]:
    """List file: one category or full stem per line; lines starting with '#' are comments."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exclude list not found: {path}")
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()  # '#' only at line start: DIS5K stems contain '#'
        if line and not line.startswith("#"):
            out.add(normalize_category(line))
    return out


# --------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class Sample:
    """One annotated image on disk."""

    image: Path
    mask: Path
    category: str
    dataset: str  # e.g. 'dis5k/DIS-VD'
    stem: str

    @property
    def key(self) -> str:
        """Unique id used for the feature cache and reports."""
        return f"{self.dataset}/{self.stem}"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset split on disk; see the module docstring for the string form."""

    kind: str
    root: Path
    split: str = ""
    categories: Path | None = None
    exclude: Path | None = None
    limit: int = 0
    options: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, spec: str) -> DatasetSpec:
        body, _, query = spec.partition("?")
        parts = body.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError(f"bad dataset spec {spec!r}: expected kind:root[:split][?k=v&...]")
        kind = parts[0].lower()
        if kind not in KINDS:
            raise ValueError(f"bad dataset spec {spec!r}: kind {kind!r} not in {KINDS}")
        kw: dict[str, Any] = {}
        for item in filter(None, query.split("&")):
            k, eq, v = item.partition("=")
            if not eq or k not in ("categories", "exclude", "limit"):
                raise ValueError(f"bad dataset spec option {item!r} in {spec!r}: "
                                 "allowed keys categories, exclude, limit")
            kw[k] = int(v) if k == "limit" else Path(v)
        return cls(kind, Path(parts[1]), parts[2] if len(parts) == 3 else "", **kw)

    def __str__(self) -> str:
        q = "&".join(f"{k}={v}" for k, v in (("categories", self.categories),
                                              ("exclude", self.exclude),
                                              ("limit", self.limit or None)) if v)
        return f"{self.kind}:{self.root}" + (f":{self.split}" if self.split else "") + (
            f"?{q}" if q else "")


def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _pairs_thinobject(root: Path, split: str) -> list[tuple[Path, Path, str]]:
    split = split or "test"
    lst = root / "list" / f"{'trainval' if split == 'train' else split}.txt"
    if lst.is_file():
        names = [n.strip() for n in lst.read_text().splitlines() if n.strip()]
        out = []
        for name in names:
            stem = Path(name).stem
            img, gt = _find_image(root / "images", stem), root / "masks" / f"{stem}.png"
            if img is None or not gt.is_file():
                raise FileNotFoundError(f"{lst}: {name} has no image in {root / 'images'} "
                                        f"or no mask {gt}")
            out.append((img, gt, stem))
        return out
    im_dir, gt_dir = root / f"images_{split}", root / f"masks_{split}"
    if im_dir.is_dir():
        return _pairs_by_stem(im_dir, gt_dir)
    raise FileNotFoundError(f"ThinObject5K split {split!r} not found under {root}: expected "
                            f"{lst} or {im_dir}")


def _pairs_by_stem(im_dir: Path, gt_dir: Path) -> list[tuple[Path, Path, str]]:
    if not im_dir.is_dir():
        raise FileNotFoundError(f"image folder missing: {im_dir}")
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"mask folder missing: {gt_dir}")
    out = []
    for img in sorted(p for p in im_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        gt = gt_dir / f"{img.stem}.png"
        if gt.is_file():
            out.append((img, gt, img.stem))
        else:
            LOG.warning("no mask for %s (expected %s); skipped", img, gt)
    return out


def _pairs_big(root: Path, split: str) -> list[tuple[Path, Path, str]]:
    folder = root / split if split else root
    if not folder.is_dir():
        raise FileNotFoundError(f"BIG split folder not found: {folder}")
    out = []
    for img in sorted(folder.glob("*_im.*")):
        stem = img.stem[: -len("_im")]
        gt = folder / f"{stem}_gt.png"
        if gt.is_file():
            out.append((img, gt, stem))
        else:
            LOG.warning("no mask for %s (expected %s); skipped", img, gt)
    return out


def _dis_splits(split: str) -> tuple[str, ...]:
    if split in DIS_ALIASES:
        return DIS_ALIASES[split]
    if split in DIS_SPLITS:
        return (split,)
    raise ValueError(f"DIS5K split {split!r} not in {DIS_SPLITS} or {tuple(DIS_ALIASES)}")


def list_samples(spec: DatasetSpec | str, default_category: str | None = None) -> list[Sample]:
    """All samples of one dataset split, sorted by stem, with their category text.

    Files whose category is empty (rule found nothing and no CSV entry) use
    ``default_category`` or raise ``ValueError`` naming the file when it is None.
    """
    spec = DatasetSpec.parse(spec) if isinstance(spec, str) else spec
    root = spec.root
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root} (spec {spec})")
    if spec.kind == "thinobject5k":
        groups = [(f"thinobject5k/{spec.split or 'test'}", _pairs_thinobject(root, spec.split))]
    elif spec.kind == "dis5k":
        splits = _dis_splits(spec.split or "val")
        if len(splits) > 1:  # an alias: the TE folders that are present
            splits = tuple(s for s in splits if (root / s).is_dir())
            if not splits:
                raise FileNotFoundError(f"no DIS5K {spec.split!r} folders under {root}")
        groups = [(f"dis5k/{s}", _pairs_by_stem(root / s / "im", root / s / "gt"))
                  for s in splits]
    elif spec.kind == "big":
        groups = [(f"big/{spec.split or 'all'}", _pairs_big(root, spec.split))]
    else:
        base = root / spec.split if spec.split else root
        groups = [(f"folder/{base.name}", _pairs_by_stem(base / "images", base / "masks"))]
        auto_csv = base / "categories.csv"
        if spec.categories is None and auto_csv.is_file():
            spec = DatasetSpec(spec.kind, spec.root, spec.split, auto_csv, spec.exclude,
                               spec.limit)
    overrides = load_category_csv(spec.categories) if spec.categories else {}
    excluded = load_exclude_list(spec.exclude) if spec.exclude else set()
    samples: list[Sample] = []
    dropped = 0
    for name, pairs in groups:
        for img, gt, stem in pairs:
            cat = (overrides.get(stem) or overrides.get(img.stem) or overrides.get(gt.stem)
                   or category_from_filename(spec.kind, stem))
            cat = normalize_category(cat) if cat else (default_category or "")
            if not cat:
                raise ValueError(f"no category for {img}: filename rule for {spec.kind!r} found "
                                 "none; add it to a categories CSV or set default_category")
            if cat in excluded or normalize_category(stem) in excluded:
                dropped += 1
                continue
            samples.append(Sample(img, gt, cat, name, stem))
    if dropped:
        LOG.info("%s: excluded %d samples listed in %s", spec, dropped, spec.exclude)
    if spec.limit:
        samples = samples[: spec.limit]
    if not samples:
        raise ValueError(f"dataset {spec} has no samples")
    return samples


def list_many(specs: Iterable[DatasetSpec | str]) -> list[Sample]:
    """Concatenation of :func:`list_samples` over several specs."""
    out: list[Sample] = []
    for s in specs:
        out.extend(list_samples(s))
    return out


# --------------------------------------------------------------------------- I/O
def read_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_gt(path: Path) -> np.ndarray:
    """H x W uint8 ground truth as stored (0..255; first channel if colour)."""
    gt = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if gt is None:
        raise OSError(f"cannot read mask {path}")
    if gt.ndim == 3:
        gt = gt[..., 0]
    if gt.dtype != np.uint8:
        gt = (gt.astype(np.float32) * (255.0 / max(1, int(np.iinfo(gt.dtype).max)))).astype(
            np.uint8)
    return gt


# --------------------------------------------------------------------------- boxes
def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight (4,) float32 XYXY box of a bool mask, max indices inclusive as in SAM-HQ.

    An empty mask gives the whole image (a prompt must exist; the loss still sees an empty GT).
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        h, w = mask.shape
        return np.array([0, 0, w - 1, h - 1], np.float32)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def part_boxes(mask: np.ndarray, max_parts: int = 4, min_area_frac: float = 0.05) -> np.ndarray:
    """(K, 4) boxes of the largest 8-connected parts holding >= min_area_frac of the mask.

    Falls back to the single tight box when there is one part or none qualifies.
    """
    m = mask.astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    total = max(1, int(m.sum()))
    parts = [s for s in stats[1:] if s[cv2.CC_STAT_AREA] >= min_area_frac * total]
    parts.sort(key=lambda s: -s[cv2.CC_STAT_AREA])
    if len(parts) <= 1:
        return box_from_mask(mask)[None]
    out = [[s[0], s[1], s[0] + s[2] - 1, s[1] + s[3] - 1] for s in parts[:max_parts]]
    return np.asarray(out, np.float32)


def jitter_boxes(boxes: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                 ratio: float) -> np.ndarray:
    """Move each corner by U(-ratio, ratio) x box side (SAM-HQ ``box_noise`` style), clipped."""
    if ratio <= 0:
        return boxes
    b = boxes.astype(np.float32).copy()
    wh = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).clip(min=1.0)
    noise = rng.uniform(-ratio, ratio, size=b.shape).astype(np.float32) * np.tile(wh, 2)
    b += noise
    h, w = shape
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w - 1)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h - 1)
    x0, x1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    y0, y1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    return np.stack([x0, y0, x1, y1], 1)


# --------------------------------------------------------------------------- augmentation
# the AugmentConfig fields that change pixels (cached features cannot follow them)
IMAGE_LEVEL_AUGMENTATIONS = ("hflip", "crop_prob", "brightness", "contrast", "saturation",
                             "noise_std")


@dataclass(frozen=True)
class AugmentConfig:
    """Thin-structure-safe augmentations (nothing ever downsamples the object).

    hflip: horizontal flip probability. crop_prob / crop_min: random crop that keeps the whole GT
    box, covering at least crop_min of each side (zooms in, i.e. only upsamples thin structures
    once the model resizes to 1024). brightness / contrast / saturation: max relative change.
    noise_std: Gaussian pixel noise (0..255 scale). box_jitter: corner noise as a fraction of the
    box side. multi_box: prompt one box per connected part (up to max_parts) instead of one.
    """

    hflip: float = 0.5
    crop_prob: float = 0.0
    crop_min: float = 0.6
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    noise_std: float = 0.0
    box_jitter: float = 0.0
    multi_box: bool = False
    max_parts: int = 4

    def __post_init__(self) -> None:
        for name in ("hflip", "crop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")
        if not 0.0 < self.crop_min <= 1.0:
            raise ValueError(f"crop_min must be in (0, 1], got {self.crop_min}")
        for name in ("brightness", "contrast", "saturation", "noise_std", "box_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_parts < 1:
            raise ValueError(f"max_parts must be >= 1, got {self.max_parts}")

    @property
    def image_level(self) -> bool:
        """True when an augmentation changes pixels (these are disabled by the feature cache)."""
        return any(getattr(self, name) for name in IMAGE_LEVEL_AUGMENTATIONS)

    def without_image_level(self) -> AugmentConfig:
        """This config with every pixel-changing augmentation off (prompt-side ones kept)."""
        return replace(self, **{name: 0.0 for name in IMAGE_LEVEL_AUGMENTATIONS})


NO_AUGMENT = AugmentConfig(hflip=0.0)


def _object_crop(mask: np.ndarray, rng: np.random.Generator, min_frac: float
                 ) -> tuple[slice, slice]:
    h, w = mask.shape
    x0, y0, x1, y1 = box_from_mask(mask).astype(int)
    ch = int(rng.uniform(min_frac, 1.0) * h)
    cw = int(rng.uniform(min_frac, 1.0) * w)
    ch, cw = max(ch, y1 - y0 + 1), max(cw, x1 - x0 + 1)
    top = int(rng.integers(max(0, y1 - ch + 1), min(y0, h - ch) + 1))
    left = int(rng.integers(max(0, x1 - cw + 1), min(x0, w - cw) + 1))
    return slice(top, top + ch), slice(left, left + cw)


def augment(image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply the image-level augmentations of ``cfg`` (uint8 RGB, bool mask) with ``rng``."""
    if cfg.crop_prob and rng.random() < cfg.crop_prob and mask.any():
        ys, xs = _object_crop(mask, rng, cfg.crop_min)
        image, mask = image[ys, xs], mask[ys, xs]
    if cfg.hflip and rng.random() < cfg.hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.noise_std:
        img = image.astype(np.float32)
        if cfg.saturation:
            grey = img.mean(axis=2, keepdims=True)
            img = grey + (img - grey) * (1 + rng.uniform(-cfg.saturation, cfg.saturation))
        if cfg.contrast:
            img = (img - img.mean()) * (1 + rng.uniform(-cfg.contrast, cfg.contrast)) + img.mean()
        if cfg.brightness:
            img = img * (1 + rng.uniform(-cfg.brightness, cfg.brightness))
        if cfg.noise_std:
            img = img + rng.normal(0.0, cfg.noise_std, img.shape)
        image = img.clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def prompt_boxes(mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(K, 4) float32 XYXY box prompts from the GT mask (tight, optional parts and jitter)."""
    boxes = part_boxes(mask, cfg.max_parts) if cfg.multi_box else box_from_mask(mask)[None]
    return jitter_boxes(boxes, mask.shape, rng, cfg.box_jitter)


# --------------------------------------------------------------------------- torch dataset
def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Per-sample generator: augmentation depends only on (seed, epoch, index), never on the
    worker or on how many samples were drawn before, which makes resume and DDP exact."""
    return np.random.default_rng([seed, epoch, index])


class SegmentationDataset(Dataset):
    """Samples -> dicts with image (H,W,3 uint8), gt (H,W bool), boxes (K,4), text, key, index."""

    def __init__(self, samples: Sequence[Sample], augment_cfg: AugmentConfig = NO_AUGMENT,
                 seed: int = 0, load_image: bool = True) -> None:
        self.samples = list(samples)
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0
        self.load_image = load_image

    def set_epoch(self, epoch: int) -> None:
        """Call before creating the epoch's DataLoader iterator."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        rng = sample_rng(self.seed, self.epoch, index)
        gt = read_gt(s.mask) > 128
        image = read_image(s.image) if self.load_image else None
        if image is not None:
            if image.shape[:2] != gt.shape:
                raise ValueError(f"{s.image} is {image.shape[:2]} but {s.mask} is {gt.shape}")
            image, gt = augment(image, gt, self.augment_cfg, rng)
        boxes = prompt_boxes(gt, self.augment_cfg, rng)
        return {"image": image, "gt": gt, "boxes": boxes, "text": s.category, "key": s.key,
                "index": index}


def collate_samples(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """List of sample dicts -> dict of lists (images differ in size, so nothing is stacked)."""
    return {k: [it[k] for it in items] for k in items[0]}


def gt_tensor(gt: np.ndarray) -> torch.Tensor:
    """bool H x W -> float32 (1, H, W) target."""
    return torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))[None]
