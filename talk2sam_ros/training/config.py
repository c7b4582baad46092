"""TrainConfig: every training default in one frozen dataclass, overridden by a YAML file and
then by ``--key=value`` command-line flags (type-checked; unknown keys are errors).

Order of precedence: dataclass defaults < YAML file (``--config PATH`` or a preset name from
``config/train/``) < CLI flags. Values on the CLI are parsed as YAML scalars/lists
(``--train_sets=[a,b]`` or ``--train_sets=a,b``), then checked against the field's type.

The augmentation and loss settings are sections (their own dataclasses, AugmentConfig and
LossConfig): a mapping in YAML (``augment: {hflip: 0.5}``), a dotted key on the CLI
(``--augment.hflip=0.5``) and in :func:`apply_overrides` (``{"augment.hflip": 0.5}``, or the
nested ``{"augment": {"hflip": 0.5}}``). Only the keys given change; the others keep the base's.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from talk2sam_ros.common.resources import config_dirs
from talk2sam_ros.model.config import DTYPE_ALIASES, DTYPE_NAMES, PRESET_NAMES
from talk2sam_ros.training.data import AugmentConfig
from talk2sam_ros.training.losses import LossConfig

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "step", "cosine")
# mixed-precision dtype: the model core's dtype vocabulary (either spelling) or auto
PRECISIONS = ("auto", *DTYPE_NAMES, *DTYPE_ALIASES)
# TrainConfig fields that are sections (nested dataclasses), by name
SECTIONS: dict[str, type] = {"augment": AugmentConfig, "loss": LossConfig}
# Keys of earlier versions: a config that still uses one gets an error saying what to write.
RENAMED = {f"{part}_checkpoint": f"checkpoint_{part}"
           for part in ("sam_hq", "dinov2", "clip", "projection")}
REMOVED = {"official_weights": "the preset's official files are now used by default; set "
                               "allow_random_weights: true to train on random encoders"}
# the flat keys of the augmentation and loss settings before they became sections ('loss'
# itself, once the loss kind, is the section's name now: see _section_values)
MOVED = {**{f.name: f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)},
         **{f.name: f"loss.{f.name}" for f in dataclasses.fields(LossConfig)
            if f.name != "kind"}}


@dataclass(frozen=True)
class TrainConfig:
    """Training run settings. Defaults reproduce the Talk2SAM paper's recipe (section 3.1):
    SGD, lr 1e-3, batch 4, 30 epochs, SAM-HQ's BCE + dice loss, ViT-H preset."""

    # ---- data: dataset specs "kind:root[:split][?categories=CSV&exclude=LIST&limit=N]"
    train_sets: tuple[str, ...] = ()
    val_sets: tuple[str, ...] = ()
    val_limit: int = 0  # evaluate at most this many validation images (0: all)
    # synthetic data generated on the fly when train_sets is empty and synthetic_n > 0
    synthetic_n: int = 0
    synthetic_size: int = 256
    synthetic_dir: str = ""  # default <out_dir>/synthetic
    synthetic_distractors: float = 0.5  # probability of distractor objects per image
    # ---- model
    preset: str = "h"
    # checkpoints (as the node's checkpoint_* parameters): a file path or a talk2sam-weights
    # registry name (e.g. sam_hq_vit_h); empty ones take the preset's official files from the
    # weights cache, which must be there unless allow_random_weights
    weights_dir: str = ""  # talk2sam-weights cache (default $TALK2SAM_WEIGHTS_DIR or ~/.cache)
    checkpoint_sam_hq: str = ""
    checkpoint_dinov2: str = ""
    checkpoint_clip: str = ""
    checkpoint_projection: str = ""  # official Talk2DINO projection as the starting point
    allow_random_weights: bool = False  # random frozen encoders for missing files (tests only)
    init_weights: str = ""  # start from one of our trained-weights files
    similarity_mode: str = ""  # "" keeps the preset's ("patch" | "attention_max")
    tune_clip_projection: bool = False  # paper's "CLIP partial": CLIP's text_projection learns
    # ---- optimisation
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9  # not stated in the paper: our choice (docs/training.md)
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    lr_schedule: str = "constant"  # the paper gives one LR and no schedule
    lr_step_epochs: int = 10  # StepLR period for lr_schedule=step (SAM-HQ: 10)
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    epochs: int = 30
    batch_size: int = 4  # per process
    grad_accum: int = 1
    grad_clip: float = 0.0  # max grad L2 norm, 0 disables (neither paper nor SAM-HQ clip)
    precision: str = "auto"  # auto: bf16 autocast on a bf16-capable GPU, fp32 on CPU
    # ---- loss (section: YAML loss: {kind: dense}, CLI --loss.kind=dense)
    loss: LossConfig = field(default_factory=LossConfig)
    # ---- augmentation (section; thin-structure safe; image-level ones are off with
    # feature_cache)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # ---- frozen-feature cache
    feature_cache: bool = False
    cache_dir: str = ""  # default <out_dir>/feature_cache
    cache_dtype: str = "float32"
    # ---- run
    out_dir: str = "runs/talk2sam"
    seed: int = 42
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: torch default)
    num_workers: int = 2
    ckpt_every: int = 500  # optimizer steps between checkpoints (epoch ends always save)
    val_every: int = 0  # optimizer steps between validations (0: epoch ends only)
    val_at_start: bool = True  # validate the untrained head at step 0 (the baseline)
    log_every: int = 10
    max_steps: int = 0  # stop (checkpointed, resumable) after this many steps; 0: no limit
    resume: bool = False
    progress: bool = True
    deterministic: bool = True
    keep_epoch_weights: bool = False  # also export weights_epochN.pt at every epoch end

    def __post_init__(self) -> None:
        for name, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES),
                              ("precision", PRECISIONS), ("preset", PRESET_NAMES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name, section in SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise ValueError(f"{name} must be a {section.__name__}, got "
                                 f"{getattr(self, name)!r}")
        if self.similarity_mode not in ("", "patch", "attention_max"):
            raise ValueError(f"similarity_mode={self.similarity_mode!r}: expected '', 'patch' "
                             "or 'attention_max'")
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip", "weight_decay", "momentum", "val_limit", "max_steps",
                     "ckpt_every", "val_every", "warmup_steps", "synthetic_n", "threads",
                     "num_workers", "synthetic_distractors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(self.betas) != 2:
            raise ValueError(f"betas needs two values, got {self.betas}")
        if self.lr_step_epochs < 1:
            raise ValueError("lr_step_epochs must be >= 1")
        if self.cache_dtype not in DTYPE_NAMES:
            raise ValueError(f"cache_dtype={self.cache_dtype!r}: one of {DTYPE_NAMES}")

    def replace(self, **changes: Any) -> TrainConfig:
        """dataclasses.replace (a section is replaced whole; see apply_overrides for keys)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested values (sections as mappings, tuples as lists): what YAML holds."""
        return _plain(dataclasses.asdict(self))

    def flat_dict(self) -> dict[str, Any]:
        """Plain values by key, sections' fields as dotted keys (``augment.hflip``)."""
        return flat_config(self.to_dict())


def flat_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config (``to_dict()``, e.g. a checkpoint's) by dotted key; also reads the flat
    layout from before the sections existed (``hflip`` -> ``augment.hflip``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key == "loss":  # the loss kind, before the loss section
            flat["loss.kind"] = value
        else:
            flat[MOVED.get(key, key)] = value
    return flat


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


def key_types() -> dict[str, Any]:
    """Every config key (sections' fields dotted: ``loss.kind``) -> its type."""
    types: dict[str, Any] = {}
    for name, typ in typing.get_type_hints(TrainConfig).items():
        if name in SECTIONS:
            types.update({f"{name}.{k}": t for k, t in
                          typing.get_type_hints(SECTIONS[name]).items()})
        else:
            types[name] = typ
    return types


def _key_error(key: str, types: Mapping[str, Any]) -> ValueError:
    """The error for a key that is not a config key: renamed, moved, removed or a typo."""
    if key in RENAMED:
        return ValueError(f"config key {key!r} is now called {RENAMED[key]!r}")
    if key in MOVED:
        section, name = MOVED[key].split(".")
        return ValueError(f"config key {key!r} is now {MOVED[key]!r} (YAML: {section}: "
                          f"{{{name}: ...}}; CLI: --{MOVED[key]}=...)")
    if key in REMOVED:
        return ValueError(f"config key {key!r} was removed: {REMOVED[key]}")
    close = difflib.get_close_matches(key, list(types), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ValueError(f"unknown config key {key!r}{hint}")


def coerce(key: str, value: Any) -> Any:
    """Check/convert ``value`` for (dotted) key ``key``; ValueError naming the key otherwise."""
    types = key_types()
    if key not in types:
        raise _key_error(key, types)
    typ = types[key]
    err = ValueError(f"{key}={value!r}: expected {getattr(typ, '__name__', typ)}")
    if typing.get_origin(typ) is tuple:
        item_type = typing.get_args(typ)[0]
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_scalar(key, v, item_type, err) for v in value)
    return _scalar(key, value, typ, err)


def _scalar(key: str, value: Any, typ: type, err: ValueError) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise err
    if typ is int:
        if isinstance(value, bool):
            raise err
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise err from None
        raise err
    if typ is float:
        if isinstance(value, bool):
            raise err
        try:
            return float(value)
        except (TypeError, ValueError):
            raise err from None
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise err
        return str(value)
    raise err


def _section_values(name: str, value: Any) -> Mapping[str, Any]:
    """A section's mapping; anything else is an error saying how to write it."""
    if isinstance(value, Mapping):
        return value
    if value is None:
        return {}
    if name == "loss":  # the loss kind, before the loss settings became a section
        raise ValueError(f"config key 'loss' is a section now: write loss: {{kind: {value}}} "
                         f"(CLI: --loss.kind={value})")
    first = dataclasses.fields(SECTIONS[name])[0].name
    raise ValueError(f"config key {name!r} is a section: a mapping such as {name}: "
                     f"{{{first}: ...}} (CLI: --{name}.{first}=...), not {value!r}")


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested section mappings -> dotted keys; top-level and dotted keys stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key)
        if key in SECTIONS:
            for sub, item in _section_values(key, value).items():
                flat[f"{key}.{sub}"] = item
        else:
            flat[key] = value
    return flat


def apply_overrides(base: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """``base`` with ``overrides`` (top-level keys, dotted section keys or nested section
    mappings; raw values are type-checked by :func:`coerce`). A bad value names its key."""
    values = {k: coerce(k, v) for k, v in _flatten(overrides).items()}
    top: dict[str, Any] = {k: v for k, v in values.items() if "." not in k}
    for name in SECTIONS:
        changes = {k.split(".", 1)[1]: v for k, v in values.items()
                   if k.startswith(f"{name}.")}
        if changes:
            try:
                top[name] = dataclasses.replace(getattr(base, name), **changes)
            except ValueError as exc:
                raise ValueError(f"{name}.{exc}") from None
    return dataclasses.replace(base, **top)


def config_search_dirs() -> list[Path]:
    """Where preset names are looked up: config/train/ of the source tree or an install."""
    return [d / "train" for d in config_dirs()]


def resolve_config_path(name: str | Path) -> Path:
    """A YAML path, or a preset name like 'tiny_synthetic' found in config/train/."""
    p = Path(name)
    if p.is_file():
        return p
    for d in config_search_dirs():
        for cand in (d / p, d / f"{p}.yaml"):
            if cand.is_file():
                return cand
    dirs = [str(d) for d in config_search_dirs()]
    raise FileNotFoundError(f"config {name!r} not found (looked in {dirs})")


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: TrainConfig()) updated by the YAML at ``path`` then ``overrides``."""
    cfg = base or TrainConfig()
    if path:
        resolved = resolve_config_path(path)
        data = yaml.safe_load(resolved.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{resolved}: expected a mapping of TrainConfig keys")
        try:
            cfg = apply_overrides(cfg, data)
        except ValueError as exc:
            raise ValueError(f"{resolved}: {exc}") from None
    return apply_overrides(cfg, overrides or {})


def parse_cli(argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    """``[--config PATH] [--resume] [--key=value ...]`` -> (config path, raw overrides).

    Section fields are dotted (``--augment.hflip=0.5``), or a whole YAML mapping is given
    (``--augment={hflip: 0.5}``). Bare ``--flag`` means true for boolean keys; everything else
    needs ``--key=value``.
    """
    types = key_types()
    cfg_path: str | None = None
    overrides: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}: use --key=value")
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key == "config":
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError("--config needs a path")
                i += 1
                raw = args[i]
            cfg_path = raw
        elif key in SECTIONS:  # --augment='{hflip: 0.5, crop_prob: 0.3}', as in YAML
            section = _section_values(key, yaml.safe_load(raw) if eq and raw.strip() else raw)
            overrides.update({f"{key}.{k}": coerce(f"{key}.{k}", v)
                              for k, v in section.items()})
        elif key not in types:
            raise _key_error(key, types)
        elif not eq:
            if types[key] is not bool:
                raise ValueError(f"--{key} needs a value: --{key}=VALUE")
            overrides[key] = True
        else:
            parsed = yaml.safe_load(raw) if raw.strip() else ""
            if types[key] is str or (typing.get_origin(types[key]) is tuple
                                     and not raw.lstrip().startswith("[")):
                parsed = raw  # keep strings verbatim (paths, '1e-3'-like names)
            overrides[key] = coerce(key, parsed)
        i += 1
    return cfg_path, overrides


def help_text() -> str:
    """All keys with type and default, for --help."""
    lines = ["talk2sam-train [--config PATH|NAME] [--resume] [--key=value ...]", "",
             "keys (defaults = the paper's recipe):"]
    types = key_types()
    defaults = TrainConfig().flat_dict()

    def entry(key: str) -> str:
        typ = types[key]
        tname = getattr(typ, "__name__", str(typ).replace("typing.", ""))
        default = defaults[key]
        return f"  --{key}={tuple(default) if isinstance(default, list) else default!r}  " \
               f"({tname})"

    lines += [entry(f.name) for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS]
    for name, section in SECTIONS.items():
        first = dataclasses.fields(section)[0].name
        lines += ["", f"{name} section (YAML: {name}: {{{first}: ...}}; CLI: "
                      f"--{name}.{first}=...):"]
        lines += [entry(f"{name}.{f.name}") for f in dataclasses.fields(section)]
    return "\n".join(lines)
