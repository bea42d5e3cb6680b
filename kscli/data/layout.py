"""Where things are: the user's download (annotations, clips) and kscli's own work folder.

One setting names the download (`--data-root` / KSCLI_DATA_ROOT); the annotation folder and the
clips root follow the `egoexo` downloader's layout and can each be overridden. One setting names
where kscli writes (`--work-dir` / KSCLI_WORK_DIR, default ./kscli-work): feature stores, runs,
submissions and reports live under it, so each command finds what the previous one made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kscli.data.labels import LABEL_MAPPING_FILE, LabelMap, read_label_map
from kscli.data.segments import ANNOTATION_FILES, SPLITS, Segment, read_segments
from kscli.errors import KscliError

ENV_DATA_ROOT = "KSCLI_DATA_ROOT"
ENV_ANNOTATIONS = "KSCLI_ANNOTATIONS_DIR"
ENV_CLIPS_ROOT = "KSCLI_CLIPS_ROOT"
ENV_WORK_DIR = "KSCLI_WORK_DIR"
DEFAULT_PART = "clips_448p"
DEFAULT_WORK_DIR = "kscli-work"


def download_annotations(root: Path) -> Path:
    """Where a download (the folder given to `egoexo -o`) keeps the benchmark's annotations."""
    return Path(root) / "annotations" / "keystep_benchmark"


def download_clips(root: Path, part: str = DEFAULT_PART) -> Path:
    """Where a download keeps a clips part (`clips_448p`: the folder's name at any clip size)."""
    return Path(root) / "keystep_benchmark" / part


def _setting(value, env: str) -> Path | None:
    value = value if value not in (None, "") else os.environ.get(env) or None
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class RunFiles:
    """The files of a run folder (`<work>/runs/<name>`, written by `kscli train-head`; their
    formats in docs/design.md), named in this one place."""

    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def predictions_val(self) -> Path:
        return self.folder / "predictions_val.json"

    @property
    def history(self) -> Path:
        return self.folder / "history.json"

    @property
    def config(self) -> Path:
        return self.folder / "config.json"

    @property
    def unfinished(self) -> Path:
        """Present while the run trains and writes (a killed run keeps it)."""
        return self.folder / ".unfinished"


@dataclass(frozen=True)
class Layout:
    """Resolved paths of one download and one work folder."""

    annotations_dir: Path | None  # None: a layout of the work folder alone (Layout.work_only)
    clips_root: Path | None
    work_dir: Path
    data_root: Path | None = None
    part: str = DEFAULT_PART

    @classmethod
    def resolve(cls, data_root=None, annotations_dir=None, clips_root=None, work_dir=None,
                part: str = DEFAULT_PART) -> "Layout":
        """Options win over environment variables; the download's layout fills in the rest."""
        root = _setting(data_root, ENV_DATA_ROOT)
        ann = _setting(annotations_dir, ENV_ANNOTATIONS)
        clips = _setting(clips_root, ENV_CLIPS_ROOT)
        part = part.strip("/")
        if part.startswith("keystep_benchmark/"):
            part = part.split("/", 1)[1]
        if "/" in part or part in ("", ".", ".."):
            raise KscliError(f"--parts {part!r}: expected a clips part such as 'clips_448p' "
                             "(or 'keystep_benchmark/clips_448p')")
        if ann is None or clips is None:
            if root is None:
                missing = "--annotations-dir" if ann is None else "--clips-root"
                raise KscliError(f"where is the download? pass --data-root OUT (the folder given to "
                                 f"`egoexo -o OUT`) or set {ENV_DATA_ROOT}, or pass {missing}")
            ann = ann or download_annotations(root)
            clips = clips or download_clips(root, part)
        work = _setting(work_dir, ENV_WORK_DIR) or Path(DEFAULT_WORK_DIR)
        return cls(annotations_dir=ann, clips_root=clips, work_dir=work, data_root=root, part=part)

    @classmethod
    def work_only(cls, work_dir=None) -> "Layout":
        """Just the work folder (for commands that read only what kscli wrote: features info,
        report); asking it for the download is one line saying to pass --data-root."""
        return cls(annotations_dir=None, clips_root=None,
                   work_dir=_setting(work_dir, ENV_WORK_DIR) or Path(DEFAULT_WORK_DIR))

    def _download(self, path: Path | None) -> Path:
        if path is None:
            raise KscliError(f"where is the download? pass --data-root OUT or set {ENV_DATA_ROOT}")
        return path

    @property
    def label_mapping_path(self) -> Path:
        return self._download(self.annotations_dir) / LABEL_MAPPING_FILE

    def annotation_path(self, split: str) -> Path:
        return self._download(self.annotations_dir) / ANNOTATION_FILES[split]

    def clip_path(self, clip_name: str) -> Path:
        return self._download(self.clips_root) / clip_name

    @property
    def stores_dir(self) -> Path:
        """Where the feature stores are: `<work>/features`."""
        return self.work_dir / "features"

    def store_names(self) -> list[str]:
        """The feature stores under the work folder (folders of features/ holding a split)."""
        root = self.stores_dir
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if d.is_dir() and any((d / s).is_dir() for s in SPLITS))

    # Where each stage writes, all under the work folder; names are checked to stay under it.
    def store_dir(self, tag: str) -> Path:
        """A feature store's folder (one subfolder per split): `<work>/features/<tag>`."""
        return self.stores_dir / check_name(tag, "store name (--store / --tag)")

    def features_dir(self, tag: str, split: str) -> Path:
        if split not in SPLITS:
            raise KscliError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return self.store_dir(tag) / split

    @property
    def runs_dir(self) -> Path:
        return self.work_dir / "runs"

    def run_dir(self, name: str, what: str = "run name (--name)") -> Path:
        """A run's folder: `<work>/runs/<name>` (`what`: how the name was given, for the error)."""
        return self.runs_dir / check_name(name, what)

    @property
    def submissions_dir(self) -> Path:
        return self.work_dir / "submissions"

    @property
    def reports_dir(self) -> Path:
        return self.work_dir / "reports"


class Benchmark:
    """The benchmark of one download: label map and segments per split, read once and validated."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self._splits: dict[str, list[Segment]] = {}

    @cached_property
    def labels(self) -> LabelMap:
        return read_label_map(self.layout.label_mapping_path)

    def segments(self, split: str) -> list[Segment]:
        if split not in self._splits:
            labels = self.labels if split != "test" else None
            self._splits[split] = read_segments(self.layout.annotation_path(split), split, labels).segments
        return self._splits[split]


def check_name(name: str, what: str) -> str:
    """`name` if it is one plain folder name (what kscli makes under the work folder), else one
    line: a path separator, `..` or an absolute path would write or read outside it."""
    if not isinstance(name, str) or not name.strip():
        raise KscliError(f"{what}: empty; give a plain name such as vjepa2-vitl or my-run")
    bad = next((c for c in ("/", "\\", "\0", ",") if c in name), None)
    if bad is not None or name in (".", "..") or name != name.strip():
        why = ("holds a path separator" if bad in ("/", "\\") else "holds a NUL byte" if bad == "\0"
               else "holds a comma (commas join store names: --store a,b)" if bad == ","
               else "is not a folder name" if name in (".", "..") else "starts or ends with a space")
        raise KscliError(f"{what} {name!r} {why}; kscli keeps stores and runs under --work-dir: give a "
                         "plain name (pass --work-dir to choose where they go)")
    if len(name.encode("utf-8")) > 200:
        raise KscliError(f"{what}: {len(name)} characters is too long for a folder name (at most 200 bytes)")
    return name


def parse_splits(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """`"train,val"` -> ["train", "val"], checked against the benchmark's splits."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for s in (x.strip() for x in items):
        if not s:
            continue
        if s not in SPLITS:
            raise KscliError(f"--split: unknown split {s!r}; choose from {', '.join(SPLITS)}")
        if s not in out:
            out.append(s)
    if not out:
        raise KscliError("--split: no split given; e.g. --split train,val,test")
    return out
