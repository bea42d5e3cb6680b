"""Head options: the `HeadConfig` dataclass every head's Config extends and `option()`, a field
with its one-line meaning (the teacher's options are in kscli.heads.teacher).

A field's type decides how `--set key=value` is parsed (int, float, bool, comma-separated
floats, text, each optionally none) and checked; `HeadConfig.options()` is what
`kscli heads --head NAME` prints. `model=True` marks a field that shapes the network: it is
saved in the checkpoint and read back when the head is rebuilt.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from kscli.errors import KscliError
from kscli.heads.common import plain


def option(default, help: str, model: bool = False):
    """A config field with its one-line meaning. `model=True`: the field shapes the network,
    so it is saved in the checkpoint's `cfg` and read back when the head is rebuilt."""
    return field(default=default, metadata={"help": help, "model": model})


def new_default(name: str, default):
    """HeadConfig's option `name` with a head's own default: its meaning (and whether it shapes
    the network) stay those HeadConfig declares, written once. In a head's Config:
    `lrs: tuple[float, ...] = new_default("lrs", (5e-3, 1e-2))`."""
    f = HeadConfig.__dataclass_fields__[name]
    return option(default, f.metadata["help"], model=f.metadata["model"])


# ----------------------------------------------------------------------------- config
@dataclass
class HeadConfig:
    """What every head's training has: the lr x wd grid, the schedule, the selection rule,
    where it runs. A head's Config subclasses this, adds its own fields and may redeclare a
    field to change its default (with `new_default`, which keeps the field's meaning)."""

    lrs: tuple[float, ...] = option((1e-3,), "learning rates of the grid (each x each weight decay)")
    weight_decays: tuple[float, ...] = option((0.0,), "decoupled (AdamW) weight decays of the grid")
    epochs: int | None = option(None, "epochs; none: enough for min_steps optimizer steps, "
                                      "within min_epochs..max_epochs")
    min_epochs: int = option(2, "fewest epochs when epochs is none")
    min_steps: int = option(64, "optimizer steps to reach when epochs is none")
    max_epochs: int = option(200, "most epochs when epochs is none")
    warmup_fraction: float = option(0.05, "share of the steps warming up linearly before the "
                                          "cosine decay")
    betas: tuple[float, ...] = option((0.9, 0.999), "AdamW's beta1,beta2")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy")
    precondition: float = option(0.1, "train on partially whitened ego features (folded into "
                                      "the head afterwards); 0: off")
    select_on: str = option("holdout", "holdout (a part of train) or val: where the grid "
                                       "member is chosen")
    holdout_fraction: float = option(0.1, "share of train held out for selection")
    seed: int = option(0, "random seed (same seed, same result)")
    device: str = option("auto", "auto (a GPU when there is one), cpu, cuda or cuda:N")
    num_threads: int | None = option(None, "CPU threads; none: every usable core (1 for tiny "
                                           "steps)")

    head: ClassVar[str] = ""  # set by register_head

    def __post_init__(self):
        for f in fields(self):
            if _kind(self, f.name) == "floats":
                setattr(self, f.name, tuple(float(v) for v in getattr(self, f.name)))

    # -- construction from the command line or a dict
    @classmethod
    def from_dict(cls, values: dict, where: str = "option") -> "HeadConfig":
        """A config from typed values (unknown keys: one line listing the known ones)."""
        values = dict(values)
        if values.pop("head", cls.head) != cls.head:  # a saved to_dict() carries its head
            raise KscliError(f"these options are for another head than {cls.head!r}")
        known = [f.name for f in fields(cls)]
        for key, value in values.items():
            if key not in known:
                raise KscliError(f"{where} {key!r}: head {cls.head!r} has no such option; its "
                                 f"options: {', '.join(known)} (kscli heads --head {cls.head})")
            if not _fits(_kind(cls, key), value):
                raise KscliError(f"{where} {key!r} of head {cls.head!r} takes "
                                 f"{_KIND_WORDS[_kind(cls, key)]}, got {value!r}")
        cfg = cls(**values)
        cfg.check()
        return cfg

    @classmethod
    def parse(cls, key: str, text: str):
        """`text` parsed as option `key`'s type; one line naming the expected type otherwise."""
        key = key.strip().replace("-", "_")
        known = [f.name for f in fields(cls)]
        if key not in known:
            raise KscliError(f"--set {key}={text}: head {cls.head!r} has no option {key!r}; its "
                             f"options: {', '.join(known)} (kscli heads --head {cls.head})")
        kind = _kind(cls, key)
        t = text.strip()
        try:
            if kind.endswith("?") and t.lower() in ("none", "null", ""):
                return None
            base = kind.rstrip("?")
            if base == "int":
                return int(t)
            if base == "float":
                return float(t)
            if base == "bool":
                if t.lower() not in _BOOLS:
                    raise ValueError(t)
                return _BOOLS[t.lower()]
            if base == "floats":
                out = tuple(float(v) for v in t.split(",") if v.strip())
                if not out:
                    raise ValueError(t)
                return out
            return t
        except ValueError:
            raise KscliError(f"--set {key}={text}: {key} takes {_KIND_WORDS[kind]}, e.g. "
                             f"--set {key}={_example(cls, key)}") from None

    def to_dict(self) -> dict:
        return {"head": self.head, **plain(asdict(self))}

    @classmethod
    def options(cls) -> list[tuple[str, str, str, str]]:
        """(name, type, default, meaning) per option, in declaration order."""
        rows = []
        for f in fields(cls):
            d = f.default
            shown = ",".join(f"{v:g}" for v in d) if isinstance(d, tuple) else \
                "none" if d is None else str(d).lower() if isinstance(d, bool) else str(d)
            rows.append((f.name, _kind(cls, f.name).replace("?", " or none"), shown,
                         f.metadata.get("help", "")))
        return rows

    def model_cfg(self) -> dict:
        """The options that shape the network (saved in the checkpoint's cfg)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("model")}

    # -- the schedule
    def grid(self) -> list[tuple[float, float]]:
        """The (lr, wd) members in training order: lr-major."""
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]

    def schedule(self, n_items: int, batch: int) -> tuple[int, int, int, int, int]:
        """(batch size, steps per epoch, epochs, total steps, warmup steps) for n_items
        mini-batch units (segments, or takes) in batches of `batch`: `epochs` if set, else
        max(min_epochs, enough epochs for min_steps steps), at most max_epochs."""
        bs = max(1, min(batch, n_items))
        per_epoch = -(-n_items // bs)
        if self.epochs is not None:
            epochs = int(self.epochs)
        else:
            need = -(-self.min_steps // max(1, per_epoch))
            epochs = int(min(self.max_epochs, max(self.min_epochs, need)))
        total = epochs * per_epoch
        return bs, per_epoch, epochs, total, max(1, int(round(self.warmup_fraction * total)))

    def check(self) -> None:
        """One line per bad value (subclasses add their own checks, then call this)."""
        if self.epochs is not None and self.epochs < 1:
            raise KscliError(f"epochs must be >= 1 (got {self.epochs})")
        if self.min_epochs < 1 or self.max_epochs < self.min_epochs:
            raise KscliError(f"need 1 <= min_epochs <= max_epochs (got {self.min_epochs}, "
                             f"{self.max_epochs})")
        if not self.lrs or not self.weight_decays:
            raise KscliError("lrs and weight_decays must each hold at least one value")
        if any(v <= 0 for v in self.lrs) or any(v < 0 for v in self.weight_decays):
            raise KscliError("learning rates must be > 0 and weight decays >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise KscliError(f"betas must be two values in [0, 1), got {self.betas}")
        if self.select_on not in ("holdout", "val"):
            raise KscliError(f"select_on must be 'holdout' or 'val', not {self.select_on!r}")
        if not 0 < self.holdout_fraction < 1:
            raise KscliError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.precondition < 0:
            raise KscliError(f"precondition must be >= 0 (0 turns it off), got {self.precondition}")
        if not 0 <= self.label_smoothing < 1:
            raise KscliError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.warmup_fraction < 1:
            raise KscliError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.seed < 0:
            raise KscliError(f"seed must be >= 0, got {self.seed}")
        if self.num_threads is not None and self.num_threads < 1:
            raise KscliError(f"num_threads must be >= 1 (or none: every usable core), got "
                             f"{self.num_threads}")
        for f in fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise KscliError(f"{f.name} must be a finite number, got {value}")
            if f.name.endswith("dropout") and not 0 <= value < 1:
                raise KscliError(f"{f.name} must be in [0, 1), got {value}")


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "floats": "comma-separated numbers", "str": "text",
               "int?": "an integer or none", "float?": "a number or none", "str?": "text or none"}


def _kind(cls, name: str) -> str:
    """int | float | bool | floats | str, with '?' when None is allowed."""
    hint = typing.get_type_hints(cls if isinstance(cls, type) else type(cls))[name]
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)
                and type(None) in args)
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        kind = "floats"
    else:
        kind = {int: "int", float: "float", bool: "bool"}.get(hint, "str")
    return kind + ("?" if optional else "")


def _fits(kind: str, value) -> bool:
    """Whether a typed value (from code or a saved config) is of the option's kind."""
    if value is None:
        return kind.endswith("?")
    number = (int, float)
    base = kind.rstrip("?")
    if base == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if base == "int":
        return isinstance(value, int)
    if base == "float":
        return isinstance(value, number)
    if base == "floats":
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, number) and not isinstance(v, bool) for v in value)
    return isinstance(value, str)


def _example(cls, key: str) -> str:
    default = {f.name: f.default for f in fields(cls)}[key]
    if isinstance(default, tuple):
        return ",".join(f"{v:g}" for v in default)
    return "true" if isinstance(default, bool) else "8" if default is None else str(default)
