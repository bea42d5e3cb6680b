"""The one way to be a head: a registered `Head` subclass with its own `Config` dataclass.

A head is a class in its own module (`linear.py`, `mlp.py`, `distill.py`, `attentive.py`,
`context.py`), registered with `@register_head`. Its `Config` (a `HeadConfig` dataclass) is the
only place its defaults live; every field carries a one-line meaning, which is what
`kscli heads --head NAME` prints and what `--set key=value` is parsed and checked against.

What a head does, in the order `kscli.heads.train.train_grid` calls it (one driver for every head):

    holdout_split(train, labels, notes)  -> (fit rows, holdout rows): the selection split
    fit_rows(train, labels, notes)       the rows to fit when selecting on val (no holdout)
    small_steps(train, fit, G)           True: one CPU thread trains faster than several
    prepare(train, fit, select, G, notes)
                                         statistics, tensors, the model with G grid members
                                         (build_model(model_cfg, generator))
    train_members(grid, gen)             one epoch per next(); yields the train loss per member
    selection_batches()                  (student logits (G, b, C), teacher logits or None, y)
    snapshot(g) / finish(snapshot)       keep grid member g; make it the head's model
    predict_proba(fs)                    (N, C) for every row of a FeatureSet, from ego alone
    teacher_proba(fs)                    the ego + exo teacher's (N, C), or None (no teacher)
    state() / from_state(ckpt)           the checkpoint dict, and back

`stacks = True` heads train the whole lr x wd grid as one module (G members); the others
train one member after another. See docs/design.md for a worked example of a new head.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import ClassVar, Iterator

import numpy as np
import torch

from kscli.errors import KscliError
from kscli.heads.common import plain
from kscli.heads.config import HeadConfig, new_default, option  # noqa: F401 - the head API
from kscli.heads.teacher import TeacherOptions  # noqa: F401 - the head API

CHECKPOINT_FORMAT = "kscli-head"
CHECKPOINT_VERSION = 1
BUILTIN_HEADS = ("linear", "mlp", "distill", "attentive", "context")


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


def unregister_head(name: str) -> None:
    """Forget head `name` (a head registered for a while, as tests do); unknown names are refused."""
    if name not in _HEADS:
        raise KscliError(f"unknown head {name!r}: nothing to unregister")
    del _HEADS[name]


def _load_heads() -> None:
    """Import the built-in heads, and your own from KSCLI_HEADS (comma-separated module names,
    found in the current folder too, or paths to .py files; a head registers when imported).
    Until every one imports, nothing counts as loaded."""
    global _loaded
    if _loaded:
        return
    for head in BUILTIN_HEADS:
        importlib.import_module(f"kscli.heads.{head}")
    for entry in [m.strip() for m in os.environ.get("KSCLI_HEADS", "").split(",") if m.strip()]:
        try:
            _import_plugin(entry)
        except Exception as e:  # noqa: BLE001 - a user's module: any failure is one line
            raise KscliError(f"KSCLI_HEADS: cannot import {entry!r} ({type(e).__name__}: {e})") from None
    _loaded = True


def _import_plugin(entry: str) -> None:
    """A module name (looked up on sys.path and in the current folder) or a path to a .py file."""
    if entry.endswith(".py") or os.sep in entry:
        path = os.path.abspath(os.path.expanduser(entry))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no file {path}")
        # its own module name: a file called utils.py must not stand in for another module `utils`
        name = "kscli_plugin_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses and pickling look it up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return
    here = os.getcwd()
    added = here not in sys.path
    if added:  # a console script's sys.path holds its own folder, not the one it runs in
        sys.path.append(here)
    try:
        importlib.import_module(entry)
    finally:
        if added:
            sys.path.remove(here)


def plugins_text() -> str:
    """Where heads of your own come from, and what KSCLI_HEADS is now (for 'unknown head' errors)."""
    now = os.environ.get("KSCLI_HEADS", "")
    return f"heads of your own load from KSCLI_HEADS (module names or .py paths; now {now!r})" if now else \
        "heads of your own load from KSCLI_HEADS (module names or .py paths; it is not set)"


def list_heads() -> list[str]:
    _load_heads()
    return sorted(_HEADS)


def head_class(name: str) -> type["Head"]:
    _load_heads()
    if name not in _HEADS:
        raise KscliError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}; {plugins_text()}")
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

    def fit(self, train, val=None, progress: bool = True):
        """Train on `train` (selecting on a holdout of it, or on `val` with select_on='val');
        returns a kscli.heads.train.TrainResult. The same driver for every head."""
        from kscli.heads.train import train_grid

        return train_grid(self, train, val, progress)

    # -- training steps (called by kscli.heads.train.train_grid)
    def holdout_split(self, train, labels: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(fit rows, holdout rows) of train: a stratified holdout of the labelled rows."""
        from kscli.heads.train import labelled_rows, stratified_holdout

        rows = labelled_rows(train, labels, notes)
        kept, held = stratified_holdout(labels[rows], self.cfg.holdout_fraction, self.cfg.seed)
        if len(held) == 0:  # every class has a single example: a plain random holdout
            k = max(1, int(round(self.cfg.holdout_fraction * len(rows))))
            held = np.sort(np.random.default_rng(self.cfg.seed).permutation(len(rows))[:k])
            kept = np.setdiff1d(np.arange(len(rows)), held)
            notes.append(f"no class has 2 examples, so the holdout ({k} segments) is not "
                         f"stratified and its classes are missing from training")
        return rows[kept], rows[held]

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

    def train_members(self, grid: list[tuple[float, float]], gen: torch.Generator
                      ) -> Iterator[np.ndarray]:
        """One epoch per next(), drawing dropout and the like from `gen` (a generator on the
        training device, seeded by the driver); yields the train loss per member."""
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
    def build_model(self, model_cfg: dict, generator: torch.Generator
                    ) -> torch.nn.Module:  # pragma: no cover - abstract
        """The model for `model_cfg`, its initial weights drawn from `generator` (a CPU one)."""
        raise NotImplementedError

    def parameter_count(self, train) -> int:
        """Numbers in one trained model (parameters and buffers) for `train`'s features, counted
        on the meta device: nothing is allocated, however large the options ask it to be."""
        exo_dim = int(train.exo.shape[-1]) if train.has_exo() else 0
        with torch.device("meta"):
            model = self.build_model({**self.cfg.model_cfg(), "exo_dim": exo_dim}, torch.Generator())
        return sum(t.numel() for t in model.state_dict().values())

    def state(self) -> dict:
        """The checkpoint dict: plain tensors and JSON-able values (torch.load(weights_only)).
        A model with a non-finite weight or statistic is refused: it would predict garbage."""
        if self.model is None:
            raise KscliError(f"head {self.name!r} has no trained model to save")
        ckpt = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "head": self.name,
                "in_dim": self.in_dim, "num_classes": self.num_classes,
                "cfg": plain(self.model.cfg), "prior": self.prior.tolist(),
                "state_dict": {k: v.detach().cpu().clone()
                               for k, v in self.model.state_dict().items()}}
        check_checkpoint(ckpt, f"the trained {self.name} head")
        return ckpt

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
        try:
            model = head.build_model(model_cfg, torch.Generator())  # values replaced by the state below
        except (TypeError, ValueError, KeyError, RuntimeError, MemoryError) as e:
            raise KscliError(f"head checkpoint: its cfg {model_cfg} does not build a {cls.name!r} head "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); the file is "
                             "damaged or not from kscli: retrain") from None
        try:
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise KscliError(f"head checkpoint does not fit head {cls.name!r}: "
                             f"{first[0] if first else e}; retrain it with this kscli") from None
        head.model = model.eval()
        return head


_FIELD_KINDS = {"head": (str, "text"), "in_dim": (int, "an integer"), "num_classes": (int, "an integer"),
                "cfg": (dict, "a dict"), "state_dict": (dict, "a dict of tensors"),
                "version": (int, "an integer"), "prior": (list, "a list of numbers"),
                "tags": (list, "a list of store names"), "labels": (list, "a list of label rows")}


def check_checkpoint(ckpt: dict, where: str = "head checkpoint") -> None:
    """One clear error for a dict that is not a kscli head checkpoint this version can read, or
    whose numbers could not give finite predictions (a NaN or infinite weight, a std of 0)."""
    if not isinstance(ckpt, dict):
        raise KscliError(f"{where}: not a kscli head checkpoint (expected a dict)")
    fmt = ckpt.get("format", CHECKPOINT_FORMAT)
    if fmt != CHECKPOINT_FORMAT:
        raise KscliError(f"{where}: checkpoint format is {fmt!r}, expected {CHECKPOINT_FORMAT!r}")
    for key in ("head", "in_dim", "num_classes", "cfg", "state_dict"):
        if key not in ckpt:
            raise KscliError(f"{where} has no {key!r}: not a kscli head checkpoint")
    for key, (kind, words) in _FIELD_KINDS.items():
        value = ckpt.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise KscliError(f"{where}: field {key!r} is {type(value).__name__} {str(value)[:40]!r}, expected "
                             f"{words}; the file is damaged or not from kscli: retrain")
    if int(ckpt.get("version", CHECKPOINT_VERSION)) > CHECKPOINT_VERSION:
        raise KscliError(f"{where}: checkpoint version {ckpt['version']} is newer than this kscli "
                         f"understands ({CHECKPOINT_VERSION}); upgrade kscli")
    if ckpt["in_dim"] < 1 or ckpt["num_classes"] < 2:
        raise KscliError(f"{where}: in_dim {ckpt['in_dim']} / num_classes {ckpt['num_classes']} are not a "
                         "head's; the file is damaged: retrain")
    for name, t in ckpt["state_dict"].items():
        if not isinstance(t, torch.Tensor):
            raise KscliError(f"{where}: state_dict[{name!r}] is not a tensor; the file is damaged: retrain")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise KscliError(f"{where}: {name} holds NaN or infinite values (a diverged training?); it "
                             "would predict garbage: retrain with a smaller learning rate")
        if name.rsplit(".", 1)[-1].endswith("_std") and t.is_floating_point() and bool((t <= 0).any()):
            raise KscliError(f"{where}: {name} has a standard deviation <= 0 (features would be divided "
                             "by it); the file is damaged: retrain")
    tags = ckpt.get("tags")
    if tags is not None and (not tags or not all(isinstance(t, str) and t for t in tags)):
        raise KscliError(f"{where}: field 'tags' must name the store(s) it was trained on; the file is damaged: retrain")
    if ckpt.get("backbones") is not None and not isinstance(ckpt["backbones"], dict):
        raise KscliError(f"{where}: field 'backbones' is not a dict of store configs; the file is damaged: retrain")
    prior = ckpt.get("prior")
    if prior is not None:
        p = np.asarray(prior, dtype=np.float64) if all(isinstance(v, (int, float)) for v in prior) else None
        if p is None or p.shape != (ckpt["num_classes"],) or not np.isfinite(p).all() or (p < 0).any() \
                or p.sum() <= 0:
            raise KscliError(f"{where}: its class prior is not {ckpt['num_classes']} finite non-negative "
                             "numbers; the file is damaged: retrain")


def load_head(ckpt: dict) -> Head:
    """Any head from its checkpoint dict (the class is looked up by the saved name)."""
    check_checkpoint(ckpt)
    return head_class(ckpt["head"]).from_state(ckpt)
