"""Annotation formats of video classification data sets: where the videos are and their labels.

``build_dataset(name, root, split=1, train=True, sampler=..., transform=...)``
(:mod:`fima_models.data.datasets`) supports:

==============  ==========================================================================
name            layout
==============  ==========================================================================
``ucf101``      ``classInd.txt``, ``trainlist0X.txt``, ``testlist0X.txt`` (in ``root``,
                ``root/ucfTrainTestlist`` or ``annotation_dir``); videos under ``root/UCF-101``,
                ``root/videos`` or ``root``, at the listed ``Class/v_....avi`` paths
``hmdb51``      ``<class>_test_splitX.txt`` (``name.avi 1|2|0``; 1 train, 2 test) in ``root``,
                ``root/testTrainMulti_7030_splits``, ``root/splits`` or ``annotation_dir``;
                videos at ``<videos>/<class>/<name>``
``kinetics400`` ``train.csv`` / ``validate.csv`` (or ``val.csv``) / ``test.csv`` with columns
                ``label,youtube_id,time_start,time_end,split``; files named
                ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (or ``<youtube_id>.<ext>``)
                anywhere under ``root/<split dir>`` (``train``, ``val``, ``validate``, ...)
                or ``root``, with or without label sub-directories
``diving48``    ``Diving48_V2_train.json`` / ``Diving48_V2_test.json`` (list of
                ``{vid_name, label, start_frame, end_frame}``) and ``Diving48_vocab.json``;
                videos ``<vid_name>.mp4`` under ``root/rgb``, ``root/videos`` or ``root``
``folder``      ``root/<class>/<video>`` (or ``root/train/<class>`` and ``root/val|test/<class>``)
``list``        a text file of ``path label`` lines (``root`` is the file, or pass
                ``annotation=``); relative paths are relative to the file's folder
==============  ==========================================================================

Each parser returns ``(samples, classes)``: ``(path, label)`` pairs, labels being 0-based
indices into ``classes``. Listed videos need not exist: the data set index drops the missing.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from fima_models._utils import VIDEO_EXTENSIONS

__all__ = ["DatasetLayoutError", "DATASET_PARSERS", "dataset_format", "list_datasets", "Sample", "Parsed"]

Sample = tuple[Path, int]
Parsed = tuple[list[Sample], list[str]]


class DatasetLayoutError(FileNotFoundError):
    """The annotation files or video folders of a data set are not where they are expected."""


# --------------------------------------------------------------------------- helpers
def _first_existing(candidates: Sequence[Path], what: str, hint: str) -> Path:
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetLayoutError(f"{what} not found (looked in: {tried}). {hint}")


def _annotation_dirs(root: Path, annotation_dir: str | os.PathLike[str] | None, subdirs: Sequence[str]) -> list[Path]:
    if annotation_dir is not None:
        return [Path(annotation_dir)]
    return [root / s for s in subdirs] + [root]


def _check_split(name: str, split: int, allowed: Sequence[int]) -> None:
    if split not in allowed:
        raise ValueError(f"{name} has splits {list(allowed)}, got split={split}")


def _video_dir(root: Path, candidates: Sequence[str], probe_rel: str | None) -> Path:
    """The first candidate video folder that contains ``probe_rel`` (else the first that exists)."""
    dirs = [root / c for c in candidates] + [root]
    if probe_rel is not None:
        for d in dirs:
            if (d / probe_rel).exists():
                return d
    for d in dirs:
        if d.is_dir():
            return d
    return root


# --------------------------------------------------------------------------- parsers
def parse_ucf101(root: Path, split: int, train: bool, annotation_dir: Any = None, **_: Any) -> Parsed:
    """Parse UCF101 ``classInd.txt`` + ``trainlist0X.txt`` / ``testlist0X.txt``."""
    _check_split("UCF101", split, (1, 2, 3))
    dirs = _annotation_dirs(root, annotation_dir, ["ucfTrainTestlist", "annotations", "splits"])
    hint = "Download UCF101 'ucfTrainTestlist' next to the videos or pass annotation_dir=."
    class_file = _first_existing([d / "classInd.txt" for d in dirs], "UCF101 classInd.txt", hint)
    list_name = f"{'train' if train else 'test'}list0{split}.txt"
    list_file = _first_existing([class_file.parent / list_name] + [d / list_name for d in dirs], f"UCF101 {list_name}",
                                hint)
    classes: list[str] = []
    for line in class_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            classes.append(parts[1])
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    rels = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            rels.append(parts[0])
    video_dir = _video_dir(root, ["UCF-101", "UCF101", "videos"], rels[0] if rels else None)
    samples = []
    for rel in rels:
        cls = rel.replace("\\", "/").split("/")[0]
        if cls.lower() not in lookup:
            raise DatasetLayoutError(f"UCF101 list {list_file} names class '{cls}' missing from {class_file}")
        samples.append((video_dir / rel, lookup[cls.lower()]))
    return samples, classes


def parse_hmdb51(root: Path, split: int, train: bool, annotation_dir: Any = None, **_: Any) -> Parsed:
    """Parse HMDB51 ``<class>_test_splitX.txt`` files (1 = train, 2 = test, 0 = unused)."""
    _check_split("HMDB51", split, (1, 2, 3))
    dirs = _annotation_dirs(root, annotation_dir, ["testTrainMulti_7030_splits", "splits", "annotations"])
    pattern = f"_test_split{split}.txt"
    files: list[Path] = []
    for d in dirs:
        if d.is_dir():
            files = sorted(p for p in d.iterdir() if p.name.endswith(pattern))
            if files:
                break
    if not files:
        raise DatasetLayoutError(
            f"HMDB51 split files '*{pattern}' not found in {[str(d) for d in dirs]}. "
            "Extract testTrainMulti_7030_splits next to the videos or pass annotation_dir=."
        )
    classes = [f.name[: -len(pattern)] for f in files]
    wanted = "1" if train else "2"
    entries: list[tuple[str, str, int]] = []
    for label, (cls, f) in enumerate(zip(classes, files)):
        for line in f.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] == wanted:
                entries.append((cls, parts[0], label))
    probe = f"{entries[0][0]}/{entries[0][1]}" if entries else None
    video_dir = _video_dir(root, ["hmdb51_org", "hmdb51", "videos"], probe)
    return [(video_dir / cls / name, label) for cls, name, label in entries], classes


_K400_SPLIT_FILES = {
    "train": ("train.csv", "kinetics_400_train.csv", "kinetics-400_train.csv"),
    "val": ("validate.csv", "val.csv", "kinetics_400_val.csv", "kinetics-400_val.csv", "kinetics_400_validate.csv"),
    "test": ("test.csv", "kinetics_400_test.csv", "kinetics-400_test.csv"),
}
_K400_SPLIT_DIRS = {
    "train": ("train", "train_256", "kinetics400_train", "videos_train"),
    "val": ("val", "validate", "valid", "validation", "val_256", "kinetics400_val", "videos_val"),
    "test": ("test", "test_256", "kinetics400_test", "videos_test"),
}


def parse_kinetics400(
    root: Path, split: int, train: bool, annotation_dir: Any = None, subset: str | None = None, **_: Any
) -> Parsed:
    """Parse Kinetics-400 CSVs and find the clips on disk (missing clips are dropped by the index)."""
    _check_split("Kinetics-400", split, (1,))
    subset = subset or ("train" if train else "val")
    if subset not in _K400_SPLIT_FILES:
        raise ValueError(f"Kinetics-400 subset must be one of {list(_K400_SPLIT_FILES)}, got '{subset}'")
    dirs = _annotation_dirs(root, annotation_dir, ["annotations", "kinetics400", "kinetics-400"])
    hint = "Put the Kinetics-400 CSVs in root/annotations or pass annotation_dir=."
    csv_file = _first_existing([d / n for d in dirs for n in _K400_SPLIT_FILES[subset]],
                               f"Kinetics-400 {subset} CSV", hint)
    train_csv = next((d / n for d in dirs for n in _K400_SPLIT_FILES["train"] if (d / n).exists()), csv_file)
    rows = _read_k400_csv(csv_file)
    classes = sorted({r["label"] for r in _read_k400_csv(train_csv)} | {r["label"] for r in rows if r["label"]})
    lookup = {c: i for i, c in enumerate(classes)}
    search = [root / d for d in _K400_SPLIT_DIRS[subset] if (root / d).is_dir()] or [root]
    by_stem: dict[str, Path] = {}
    for d in search:
        for dirpath, _dirs, names in os.walk(d):
            for n in names:
                stem, ext = os.path.splitext(n)
                if ext.lower() in VIDEO_EXTENSIONS:
                    by_stem.setdefault(stem, Path(dirpath) / n)
    samples = []
    for r in rows:
        if not r["label"]:
            continue  # the official test CSV has no labels
        stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        path = by_stem.get(stem) or by_stem.get(r["youtube_id"])
        if path is None:
            label_dir = r["label"].replace(" ", "_")
            path = search[0] / label_dir / f"{stem}.mp4"  # reported as missing by the index
        samples.append((path, lookup[r["label"]]))
    return samples, classes


def _read_k400_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetLayoutError(
                f"{path} is not a Kinetics CSV: need columns label,youtube_id,time_start,time_end,split; "
                f"got {reader.fieldnames}"
            )
        return [{**row, "label": (row.get("label") or "").strip()} for row in reader]


def parse_diving48(root: Path, split: int, train: bool, annotation_dir: Any = None, **_: Any) -> Parsed:
    """Parse Diving48 V2 JSON annotations and the vocabulary."""
    _check_split("Diving48", split, (1,))
    dirs = _annotation_dirs(root, annotation_dir, ["annotations", "labels"])
    names = ["Diving48_V2_train.json", "Diving48_train.json"] if train else ["Diving48_V2_test.json",
                                                                             "Diving48_test.json"]
    ann = _first_existing([d / n for d in dirs for n in names], "Diving48 annotation JSON",
                          "Put the Diving48 V2 JSON files in root or pass annotation_dir=.")
    items = json.loads(ann.read_text(encoding="utf-8"))
    vocab_file = next((d / "Diving48_vocab.json" for d in dirs if (d / "Diving48_vocab.json").exists()), None)
    if vocab_file is not None:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        classes = [" ".join(v) if isinstance(v, list) else str(v) for v in vocab]
    else:
        classes = [str(i) for i in range(max(int(it["label"]) for it in items) + 1)]
    video_dir = _video_dir(root, ["rgb", "videos", "Diving48_rgb"], f"{items[0]['vid_name']}.mp4" if items else None)
    samples = []
    for it in items:
        label = int(it["label"])
        if not 0 <= label < len(classes):
            raise DatasetLayoutError(f"{ann}: label {label} outside the {len(classes)} vocabulary classes")
        samples.append((video_dir / f"{it['vid_name']}.mp4", label))
    return samples, classes


def parse_folder(root: Path, split: int, train: bool, **_: Any) -> Parsed:
    """Class-per-folder tree; ``root/train`` + ``root/val`` (or ``test``) when present."""
    base = root
    if (root / "train").is_dir():
        base = root / "train" if train else _first_existing(
            [root / "val", root / "validation", root / "test"], "validation folder",
            "A folder tree with root/train needs root/val or root/test for train=False.")
    if not base.is_dir():
        raise DatasetLayoutError(f"video folder '{base}' does not exist")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetLayoutError(f"no class folders in '{base}'; expected root/<class>/<video>")
    samples = []
    for label, cls in enumerate(classes):
        for dirpath, _dirs, names in sorted(os.walk(base / cls)):
            for n in sorted(names):
                if os.path.splitext(n)[1].lower() in VIDEO_EXTENSIONS:
                    samples.append((Path(dirpath) / n, label))
    return samples, classes


def parse_list(root: Path, split: int, train: bool, annotation: Any = None, **_: Any) -> Parsed:
    """``path label`` lines; integer labels are class indices, other labels are class names."""
    list_file = Path(annotation) if annotation is not None else root
    if not list_file.is_file():
        raise DatasetLayoutError(f"file list '{list_file}' not found; pass the list file as root or annotation=")
    base = list_file.parent if annotation is None else root
    rows: list[tuple[str, str]] = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DatasetLayoutError(f"{list_file}:{n}: expected 'path label', got '{line}'")
        rows.append((parts[0], parts[1]))
    if all(re.fullmatch(r"\d+", y) for _, y in rows):
        num = max((int(y) for _, y in rows), default=-1) + 1
        classes = [str(i) for i in range(num)]
        labels = [int(y) for _, y in rows]
    else:
        classes = sorted({y for _, y in rows})
        labels = [classes.index(y) for _, y in rows]
    return [((base / p) if not os.path.isabs(p) else Path(p), y) for (p, _), y in zip(rows, labels)], classes


DATASET_PARSERS: dict[str, Callable[..., Parsed]] = {
    "ucf101": parse_ucf101,
    "hmdb51": parse_hmdb51,
    "kinetics400": parse_kinetics400,
    "diving48": parse_diving48,
    "folder": parse_folder,
    "list": parse_list,
}
_ALIASES = {"k400": "kinetics400", "kinetics": "kinetics400", "kinetics-400": "kinetics400", "ucf": "ucf101",
            "hmdb": "hmdb51", "motion": "ucf101"}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return sorted(DATASET_PARSERS)


def dataset_format(name: str) -> str:
    """The format key of data set ``name`` (case-insensitive, aliases such as ``k400`` allowed).

    Raises:
        ValueError: unknown name (the message lists the known ones and the closest match).
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASET_PARSERS:
        close = difflib.get_close_matches(name.lower(), list(DATASET_PARSERS) + list(_ALIASES), n=1)
        extra = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown data set '{name}'; choose from {list_datasets()}.{extra}")
    return key
