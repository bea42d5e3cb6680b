"""The one way to be a head: a registered `Head` subclass with its own `Config` dataclass.

A head is a class in its own module (`linear.py`, `mlp.py`, `distill.py`, `attentive.py`,
`context.py`), registered with `@register_head`. Its `Config` (a `HeadConfig` dataclass) is the
only place its defaults live; every field carries a one-line meaning, which is what
`kscli heads --head NAME` prints and what `--set key=value` is parsed and checked against.

What a head does, in the order `kscli.heads.train.fit` calls it (one driver for every head):

    split(train, labels, notes)       -> (fit rows, holdout rows): the selection split
    prepare(train, fit, select, G)    statistics, tensors, the model with G grid members
    train_members(grid)               one epoch per next(); yields the train loss per member
    selection_batches()               (student logits (G, b, C), teacher logits or None, y)
    snapshot(g) / finish(snapshot)    keep grid member g; make it the head's model
    predict_proba(fs)                 (N, C) for every row of a FeatureSet, from ego alone
    teacher_proba(fs)                 the ego + exo teacher's (N, C), or None (no teacher)
    state() / from_state(ckpt)        the checkpoint dict, and back

`stacks = True` heads train the whole lr x wd grid as one module (G members); the others
train one member after another. See docs/design.md for a worked example of a new head.
"""

from __future__ import annotations

import importlib
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch

from kscli.errors import KscliError
from kscli.heads.common import plain

CHECKPOINT_FORMAT = "kscli-head"
CHECKPOINT_VERSION = 1
BUILTIN_HEADS = ("linear", "mlp", "distill", "attentive", "context")


def option(default, help: str, model: bool = False):
    """A config field with its one-line meaning. `model=True`: the field shapes the network,
    so it is saved in the checkpoint's `cfg` and read back when the head is rebuilt."""
    return field(default=default, metadata={"help": help, "model": model})


# ----------------------------------------------------------------------------- config
@dataclass
class HeadConfig:
    """What every head's training has: the lr x wd grid, the schedule, the selection rule,
    where it runs. A head's Config subclasses this, adds its own fields and may redeclare a
    field to change its default."""

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


@dataclass
class TeacherOptions:
    """Options of a head that trains an ego + exo teacher beside its ego-only student
    (distill, context): put it before the head's base config, `class C(TeacherOptions, Base)`."""

    temperature: float = option(2.0, "softmax temperature of the teacher -> student KL term",
                                model=True)
    alpha: float = option(1.0, "weight of the teacher -> student KL term", model=True)
    beta: float = option(1.0, "weight of the hidden-state (hint) term", model=True)
    teacher_weight: float = option(1.0, "weight of the teacher's own cross-entropy", model=True)
    view_dropout: float = option(0.3, "probability of dropping each exo view in training",
                                 model=True)

    def check(self) -> None:
        super().check()
        if self.temperature <= 0:
            raise KscliError(f"temperature must be > 0, got {self.temperature}")
        if min(self.alpha, self.beta, self.teacher_weight) < 0:
            raise KscliError("alpha, beta and teacher_weight must be >= 0")


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


# ----------------------------------------------------------------------------- registry
_HEADS: dict[str, type["Head"]] = {}
_loaded = False


def register_head(cls: type["Head"]) -> type["Head"]:
    """Class decorator: make a Head subclass (with `name` and `Config` set) available by name."""
    if not cls.name or not (isinstance(cls.Config, type) and issubclass(cls.Config, HeadConfig)):
        raise TypeError(f"{cls.__name__}: a head needs a `name` and a HeadConfig `Config`")
    if cls.Config.head not in ("", cls.name):  # one config class per head, never shared
        raise TypeError(f"{cls.__name__}: its Config belongs to head {cls.Config.head!r}; give head "
                        f"{cls.name!r} its own (a subclass of {cls.Config.__name__})")
    if _HEADS.get(cls.name, cls) is not cls:
        raise ValueError(f"head {cls.name!r} is already registered")
    cls.Config.head = cls.name
    _HEADS[cls.name] = cls
    return cls


def _load_heads() -> None:
    """Import the built-in heads, and the modules named in KSCLI_HEADS (comma-separated; your
    own heads, registered when imported). Until every one imports, nothing counts as loaded."""
    global _loaded
    if _loaded:
        return
    for head in BUILTIN_HEADS:
        importlib.import_module(f"kscli.heads.{head}")
    for mod in [m.strip() for m in os.environ.get("KSCLI_HEADS", "").split(",") if m.strip()]:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - a user's module: any failure is one line
            raise KscliError(f"KSCLI_HEADS: cannot import {mod!r} ({type(e).__name__}: {e})"
                             ) from None
    _loaded = True


def list_heads() -> list[str]:
    _load_heads()
    return sorted(_HEADS)


def head_class(name: str) -> type["Head"]:
    _load_heads()
    if name not in _HEADS:
        raise KscliError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}")
    return _HEADS[name]


def describe_options(head: str, width: int = 100) -> str:
    """Head `head`'s description and its options as a table (name, type, default, meaning),
    meanings wrapped to `width` columns."""
    import textwrap

    cls = head_class(head)
    rows = [("option", "type", "default", "meaning"), *cls.Config.options()]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    indent = 2 + sum(w) + 6
    lines = textwrap.wrap(f"{head}: {cls.description}", width, subsequent_indent="  ")
    if width - indent < 30:  # long names or defaults: each meaning on its own lines below
        indent = 6
    for name, kind, default, meaning in rows:
        wrapped = textwrap.wrap(meaning, width - indent) or [""]
        row = f"  {name:<{w[0]}}  {kind:<{w[1]}}  {default:<{w[2]}}  "
        if len(row) > indent:  # the long layout: the row, then its meaning below
            lines.append(row.rstrip())
            lines += [" " * indent + more for more in wrapped]
        else:
            lines.append(row + wrapped[0])
            lines += [" " * indent + more for more in wrapped[1:]]
    return "\n".join(lines)


def config_for(head: str, sets: list[str] | None = None, **values) -> "HeadConfig":
    """Head `head`'s config: its defaults, then typed `values`, then `sets` ("key=value"
    strings, parsed by each field's type). Every bad key or value is one line."""
    cls = head_class(head).Config
    merged = dict(values)
    for item in sets or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise KscliError(f"--set {item!r}: expected key=value, e.g. --set seed=1")
        merged[key.strip().replace("-", "_")] = cls.parse(key, text)
    return cls.from_dict(merged)


# ----------------------------------------------------------------------------- the interface
class Head:
    """A trained (or trainable) head: its config, sizes, the class prior and, once fit, `model`
    (an nn.Module, on CPU, eval mode). Subclasses implement the methods marked abstract."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[HeadConfig]] = HeadConfig
    stacks: ClassVar[bool] = True  # the grid's members train together, as one module
    keeps_missing: ClassVar[bool] = False  # reads segments without an ego feature too
    has_teacher: ClassVar[bool] = False  # trains an ego + exo teacher beside the student

    def __init__(self, cfg: HeadConfig, in_dim: int, num_classes: int,
                 model: torch.nn.Module | None = None, prior=None):
        if not isinstance(cfg, self.Config):
            raise KscliError(f"head {self.name!r} takes a {self.Config.__name__}, not "
                             f"{type(cfg).__name__}")
        if in_dim < 1 or num_classes < 2:
            raise KscliError(f"head {self.name!r}: need in_dim >= 1 and num_classes >= 2 "
                             f"(got {in_dim}, {num_classes})")
        self.cfg, self.in_dim, self.num_classes = cfg, int(in_dim), int(num_classes)
        self.model = model
        self.prior = (np.full(num_classes, 1.0 / num_classes, np.float32) if prior is None
                      else np.asarray(prior, dtype=np.float32))
        self.info: dict = {}  # what prepare() found (sizes, teacher on/off, ...)

    def fit(self, train, val=None, progress: bool = True):
        """Train on `train` (selecting on a holdout of it, or on `val` with select_on='val');
        returns a kscli.heads.train.TrainResult. The same driver for every head."""
        from kscli.heads.train import fit

        return fit(self, train, val, progress)

    # -- training steps (called by kscli.heads.train.fit)
    def split(self, train, labels: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(fit rows, holdout rows) of train: a stratified holdout of the labelled rows."""
        from kscli.heads.train import labelled_rows, stratified_holdout

        rows = labelled_rows(train, labels, notes)
        fit, hold = stratified_holdout(labels[rows], self.cfg.holdout_fraction, self.cfg.seed)
        if len(hold) == 0:  # every class has a single example: a plain random holdout
            k = max(1, int(round(self.cfg.holdout_fraction * len(rows))))
            hold = np.sort(np.random.default_rng(self.cfg.seed).permutation(len(rows))[:k])
            fit = np.setdiff1d(np.arange(len(rows)), hold)
            notes.append(f"no class has 2 examples, so the holdout ({k} segments) is not "
                         f"stratified and its classes are missing from training")
        return rows[fit], rows[hold]

    def fit_rows(self, train, labels: np.ndarray, notes: list[str]) -> np.ndarray:
        """The rows training uses when selection is on val (no holdout): labelled rows."""
        from kscli.heads.train import labelled_rows

        return labelled_rows(train, labels, notes)

    def small_steps(self, train, fit_rows: np.ndarray, members: int) -> bool:
        """True when a step is so small that a second CPU thread only adds sync cost."""
        return False

    def prepare(self, train, fit_rows: np.ndarray, select, members: int,
                notes: list[str]) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_members(self, grid: list[tuple[float, float]]) -> Iterator[np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def selection_batches(self) -> Iterator[tuple]:
        raise NotImplementedError  # pragma: no cover - abstract

    def snapshot(self, member: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, snapshot) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- use
    def predict_proba(self, fs) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def teacher_trained(self) -> bool:
        """Whether this trained head has a teacher to score (a teacher head may train without
        one: no exo views in train)."""
        return self.has_teacher

    def teacher_proba(self, fs) -> np.ndarray | None:
        """The teacher's (ego + exo) class probabilities, or None for a head without one."""
        return None

    # -- checkpoints
    def build_model(self, model_cfg: dict) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self) -> dict:
        """The checkpoint dict: plain tensors and JSON-able values (torch.load(weights_only))."""
        if self.model is None:
            raise KscliError(f"head {self.name!r} has no trained model to save")
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "head": self.name,
                "in_dim": self.in_dim, "num_classes": self.num_classes,
                "cfg": plain(self.model.cfg), "prior": self.prior.tolist(),
                "state_dict": {k: v.detach().cpu().clone()
                               for k, v in self.model.state_dict().items()}}

    @classmethod
    def from_state(cls, ckpt: dict) -> "Head":
        """Rebuild a head (model on CPU, eval mode) from `state()`'s dict. Checkpoints of
        earlier kscli versions with the same format version load too."""
        check_checkpoint(ckpt)
        if ckpt["head"] != cls.name:
            raise KscliError(f"checkpoint is a {ckpt['head']!r} head, not {cls.name!r}")
        head = cls(cls.Config(), int(ckpt["in_dim"]), int(ckpt["num_classes"]),
                   prior=ckpt.get("prior"))
        model_cfg = {**head.cfg.model_cfg(), **dict(ckpt["cfg"])}
        with torch.random.fork_rng(devices=[]):  # the throw-away init leaves the caller's RNG
            model = head.build_model(model_cfg)
        try:
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise KscliError(f"head checkpoint does not fit head {cls.name!r}: "
                             f"{first[0] if first else e}; retrain it with this kscli") from None
        head.model = model.eval()
        return head


def check_checkpoint(ckpt: dict) -> None:
    """One clear error for a dict that is not a kscli head checkpoint this version can read."""
    if not isinstance(ckpt, dict):
        raise KscliError("not a kscli head checkpoint (expected a dict)")
    fmt = ckpt.get("format", CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        raise KscliError(f"checkpoint format is {fmt!r}, expected {CHECKPOINT_FORMAT!r}")
    for key in ("head", "in_dim", "num_classes", "cfg", "state_dict"):
        if key not in ckpt:
            raise KscliError(f"head checkpoint has no {key!r}: not a kscli head checkpoint")
    if int(ckpt.get("version", CHECKPOINT_VERSION)) > CHECKPOINT_VERSION:
        raise KscliError(f"head checkpoint version {ckpt['version']} is newer than this kscli "
                         f"understands ({CHECKPOINT_VERSION}); upgrade kscli")


def load_head(ckpt: dict) -> Head:
    """Any head from its checkpoint dict (the class is looked up by the saved name)."""
    check_checkpoint(ckpt)
    return head_class(ckpt["head"]).from_state(ckpt)


def rng_free(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """build() without moving the caller's CPU random generator."""
    with torch.random.fork_rng(devices=[]):
        return build()
