"""Your own images as an ImageDataset, decoded once with PIL and cached as a uint8 tensor file.

Two layouts of a folder ROOT:

class folders   ROOT/labeled/<class>/**/<image>   the labelled images, their class is their folder
                ROOT/unlabeled/**/<image>         optional: images without a label, at any depth
                ROOT/test/<class>/**/<image>      optional: the test split
a labels CSV    ROOT/**/<image> and --labels-csv FILE with rows `file,label` (file relative to ROOT, an optional
                `file,label` header); every image the CSV does not name is unlabelled. --test-csv FILE, in the
                same format, names the test images.

An <image> is a file with an image suffix (`images.IMAGE_SUFFIXES`: .png, .jpg, .tif, ...); other files, such
as CSVs and notes, are passed over, and so are hidden files and folders (a leading dot), so the cache in
ROOT/.mixmatch-cache is never read as an image. Nothing the product writes is read as an image either: run,
grid and report folders are passed over, and so are the PNG figures it tags. A file a CSV names is read
whatever its suffix. CSVs are read as spreadsheets save them (byte-order mark, CRLF, quoted fields, spaces
around values, blank lines); a row that is not `file,label` stops the run with its file and line number.

Every image is decoded by `images.load_image` (upright, every mode and bit depth scaled to 8 bits, shorter
side scaled to --image-size and centre-cropped to a square); if any image has colour, all become RGB (grey
ones are repeated over three channels), else all stay grey. Files that PIL cannot read are reported and
skipped, or refused with strict=True. Byte-identical files across the labelled, test and unlabelled images
are named in one warning line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import runfolder
from .dataset import DataError, ImageDataset
from .images import DECODER_VERSION, ImageError, find_image_files, is_image_file, is_our_figure, load_image

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cache file's format changes; DECODER_VERSION covers its pixels


def _natural_key(text: str) -> list[int | str]:
    """Sorts class '2' before '10', so numeric labels keep their numeric order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _scan(folder: Path, root: Path) -> list[str]:
    """Every non-hidden image file (by suffix) under `folder`, as sorted paths relative to `root` with
    forward slashes; other files (CSVs, notes) are passed over, and so are the folders the product writes (run,
    grid and report folders, `runfolder.is_output_folder`), wherever a user put them."""
    return sorted(path.relative_to(root).as_posix() for path in find_image_files(folder))


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each row of a CSV that holds a value, as spreadsheets save them.

    Read as UTF-8 with or without a byte-order mark ("CSV UTF-8" of spreadsheets), any line ends (CRLF),
    quoted fields, spaces around values; blank lines and rows of empty cells are passed over, and so are
    empty cells at the end of a row.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the CSV {path} ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f'{path} line {line} is not UTF-8 text; save the CSV as "CSV UTF-8"') from None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    rows, line = [], 1
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            while cells and not cells[-1]:  # trailing empty columns, as spreadsheets write them
                cells.pop()
            if cells:
                rows.append((line, cells))
            line = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num} is not CSV ({error})") from None
    return rows


def _read_csv(path: Path, root: Path) -> list[tuple[str, str]]:
    """(file relative to root, label) rows of a `file,label` CSV; a header row `file,label` is skipped.

    Raises DataError naming the file and line of a row that is not `file,label`, a header that is not
    `file,label`, or a file given two labels.
    """
    rows = _csv_rows(path)
    header = bool(rows) and [cell.lower() for cell in rows[0][1]] == ["file", "label"]
    entries: dict[str, tuple[str, int]] = {}
    for number, cells in rows[1:] if header else rows:
        if len(cells) != 2 or not all(cells):
            hint = ""
            if any("\n" in cell for cell in cells):
                hint = " (a quote that is not closed?)"
            elif len(cells) == 1 and (";" in cells[0] or "\t" in cells[0]):
                hint = " (separated by semicolons or tabs? mixmatch reads commas)"
            raise DataError(f"{path} line {number} is {','.join(cells)!r}, not `file,label`{hint}")
        # A CSV written on Windows may name files with backslashes.
        file, label = Path(cells[0].replace("\\", "/")), cells[1]
        if not header and number == rows[0][0] and not is_image_file(file) and not (root / file).exists():
            raise DataError(f"{path} line {number} is {','.join(cells)!r}: a header must be `file,label`, or none")
        if file.is_absolute() and file.resolve().is_relative_to(root.resolve()):
            file = file.resolve().relative_to(root.resolve())  # one name per image, however the CSV spells it
        name = os.path.normpath(file).replace(os.sep, "/")
        first = entries.setdefault(name, (label, number))
        if first[0] != label:
            raise DataError(
                f"{path} gives {name} two labels, {first[0]!r} and {label!r} (lines {first[1]} and {number})"
            )
    if not entries:
        raise DataError(f"the CSV {path} names no images")
    return [(name, label) for name, (label, _) in entries.items()]


def _class_folders(folder: Path, root: Path) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """(class names, (file, class) of their images, (file, reason) of files outside any class folder)."""
    classes, entries, loose = [], [], []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            classes.append(child.name)
            entries += [(name, child.name) for name in _scan(child, root)]
        elif is_image_file(child):
            loose.append((child.relative_to(root).as_posix(), "not inside a class folder"))
    return classes, entries, loose


class _Decoded(NamedTuple):
    images: Tensor  # (N, C, size, size) uint8
    files: list[str]  # the N files they came from
    digests: dict[str, str]  # file -> hash of its bytes, for every readable image
    bad: list[tuple[str, str]]  # (file, reason) of the files that are not readable images
    ours: list[str]  # figures the product wrote (`images.is_our_figure`): not data


def _decode(path: Path, size: int) -> tuple[np.ndarray, str] | str | None:
    """The image at `path` as (size, size) grey or (size, size, 3) RGB uint8 and a hash of the file's bytes; why it
    cannot be read; or None for a figure the product wrote (`is_our_figure`), which is not data."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        return error.strerror or "cannot read"
    if is_our_figure(raw):
        return None
    try:
        return load_image(path, size), hashlib.blake2b(raw, digest_size=8).hexdigest()
    except ImageError as error:
        return error.reason


def _cache_dirs(root: Path) -> list[Path]:
    """Where caches go: the image folder itself, else the user's cache folder (for read-only image folders)."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mixmatch"
    return [root / ".mixmatch-cache", home]


def _decode_all(root: Path, names: list[str], size: int) -> _Decoded:
    """Every named file decoded (`_decode`), the figures the product wrote left out.

    Re-uses a cache keyed on the file names, sizes and modification times, so an unchanged folder is
    decoded once and later runs never touch PIL.
    """
    stats, missing = [], []
    for name in names:
        try:
            info = (root / name).stat()
            stats.append((name, info.st_size, info.st_mtime_ns))
        except OSError as error:  # e.g. a broken symbolic link
            missing.append((name, error.strerror or "cannot read"))
    key = hashlib.sha256(json.dumps([CACHE_VERSION, DECODER_VERSION, size, stats]).encode()).hexdigest()[:16]
    prefix = f"images-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}-{size}px"
    for folder in _cache_dirs(root):
        cached = folder / f"{prefix}-{key}.pt"
        if cached.is_file():
            try:
                record = torch.load(cached, weights_only=True)
                bad = missing + [(name, why) for name, why in record["bad"]]
                return _Decoded(record["images"], record["files"], record["digests"], bad, record["ours"])
            except Exception as error:  # a damaged or foreign file: decode again and overwrite it
                log.warning(f"mixmatch: ignoring the unreadable cache {cached} ({type(error).__name__})")

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # PIL releases the GIL while decoding
        decoded = list(pool.map(lambda stat: _decode(root / stat[0], size), stats))
    good = [(name, result) for (name, _, _), result in zip(stats, decoded, strict=True) if isinstance(result, tuple)]
    bad = [(name, why) for (name, _, _), why in zip(stats, decoded, strict=True) if isinstance(why, str)]
    ours = [name for (name, _, _), result in zip(stats, decoded, strict=True) if result is None]
    colour = any(array.ndim == 3 for _, (array, _) in good)
    arrays = [np.repeat(a[..., None], 3, 2) if colour and a.ndim == 2 else a for _, (a, _) in good]
    if not arrays:
        images = torch.zeros((0, 1, size, size), dtype=torch.uint8)
    elif colour:
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    else:
        images = torch.from_numpy(np.stack(arrays))[:, None].contiguous()
    files = [name for name, _ in good]
    digests = {name: digest for name, (_, digest) in good}
    record = {"images": images, "files": files, "digests": digests, "bad": [list(pair) for pair in bad], "ours": ours}
    _write_cache(record, prefix, key, root)
    return _Decoded(images, files, digests, missing + bad, ours)


def _write_cache(record: dict, prefix: str, key: str, root: Path) -> None:
    for folder in _cache_dirs(root):
        try:
            runfolder.make_folder(folder)
            # atomic: a concurrent run never reads half a file, and a full disk leaves no partial one
            runfolder.atomic_write(folder / f"{prefix}-{key}.pt", lambda tmp: torch.save(record, tmp))
        except runfolder.WriteError:
            continue
        for stale in folder.glob(f"{prefix}-*.pt"):
            if stale.name != f"{prefix}-{key}.pt":
                stale.unlink(missing_ok=True)
        return
    log.warning(f"mixmatch: could not write an image cache in {' or '.join(map(str, _cache_dirs(root)))}")


def _duplicates(groups: dict[str, list[str]], digests: dict[str, str]) -> str | None:
    """One warning line on byte-identical files across the labelled, test and unlabelled images (and among the
    labelled ones, which a validation hold-out may split), or None where there are none."""
    first: dict[str, tuple[str, str]] = {}  # file hash -> (group, file) where it was first seen
    copies: dict[tuple[str, str], list[str]] = {}  # (group, group of the original) -> "copy = original"
    for group, names in groups.items():
        for name in names:
            digest = digests.get(name)
            if digest is None:
                continue
            seen = first.setdefault(digest, (group, name))
            if seen[1] != name and (seen[0] != group or group == "labelled"):
                copies.setdefault((group, seen[0]), []).append(f"{name} = {seen[1]}")
    if not copies:
        return None
    parts = []
    for (group, original), pairs in copies.items():
        shown = ", ".join(pairs[:2]) + (", ..." if len(pairs) > 2 else "")
        parts.append(f"{len(pairs)} {group} image{'' if len(pairs) == 1 else 's'} copying {original} ones ({shown})")
    return (
        f"mixmatch: warning: byte-identical copies across the splits: {'; '.join(parts)}. A test image that is also a "
        "training image inflates the test accuracy: delete the copies"
    )


def _report_bad(bad: list[tuple[str, str]], root: Path, strict: bool) -> None:
    if not bad:
        return
    shown = ", ".join(f"{name} ({reason})" for name, reason in bad[:3]) + (", ..." if len(bad) > 3 else "")
    if strict:
        raise DataError(
            f"{len(bad)} file(s) in {root} are not readable images: {shown}; remove them, or drop --strict-images "
            f"to skip them"
        )
    log.warning(f"mixmatch: skipped {len(bad)} file(s) in {root} that are not readable images: {shown}")


def load_image_folder(
    data_dir: str | Path,
    labels_csv: str | Path | None = None,
    test_csv: str | Path | None = None,
    image_size: int = 32,
    strict: bool = False,
) -> ImageDataset:
    """Your images as an ImageDataset named 'folder' (layouts in the module docstring).

    train: the labelled images (their file names in `files`); extra_unlabeled: the unlabelled ones; test:
    ROOT/test or --test-csv, else empty (the caller holds out a --val-fraction). Class folders and CSV labels
    without a single readable image are left out of the classes, with a warning.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder")
    if image_size < 4:
        raise DataError(f"--image-size must be at least 4, got {image_size}")
    bad: list[tuple[str, str]] = []
    if labels_csv is not None:
        labelled = _read_csv(Path(labels_csv), root)
        folder_classes = sorted({c for _, c in labelled}, key=_natural_key)
        unlabelled = _scan(root, root)
    else:
        if not (root / "labeled").is_dir():
            raise DataError(
                f"{root} has no labeled/ folder: put images in ROOT/labeled/<class>/ (and ROOT/unlabeled/, "
                f"ROOT/test/<class>/), or name a CSV of labels with --labels-csv"
            )
        folder_classes, labelled, loose = _class_folders(root / "labeled", root)
        bad += loose
        unlabelled = _scan(root / "unlabeled", root) if (root / "unlabeled").is_dir() else []
    test: list[tuple[str, str]] = []
    if test_csv is not None:
        test = _read_csv(Path(test_csv), root)
    elif labels_csv is None and (root / "test").is_dir():
        _, test, loose = _class_folders(root / "test", root)
        bad += loose
    overlap = {name for name, _ in labelled} & {name for name, _ in test}
    if overlap:
        raise DataError(f"{len(overlap)} images are both labelled and test images: {', '.join(sorted(overlap)[:3])}")
    named = {name for name, _ in labelled + test}
    unlabelled = [n for n in unlabelled if n not in named]
    absent = {name for name in named if not (root / name).is_file()}  # only a CSV can name a file that is not there
    bad += [(name, "named in the CSV, not found") for name in sorted(absent)]
    labelled = [(n, c) for n, c in labelled if n not in absent]
    test = [(n, c) for n, c in test if n not in absent]

    decoded = _decode_all(root, sorted({n for n, _ in labelled + test} | set(unlabelled)), image_size)
    images, files = decoded.images, decoded.files
    bad += [(name, "a figure mixmatch wrote, not data") for name in decoded.ours if name in named]
    _report_bad(bad + decoded.bad, root, strict)
    row = {name: i for i, name in enumerate(files)}
    labelled = [(n, c) for n, c in labelled if n in row]
    test = [(n, c) for n, c in test if n in row]
    pool_files = [n for n in unlabelled if n in row]
    groups = {"labelled": [n for n, _ in labelled], "test": [n for n, _ in test], "unlabelled": pool_files}
    copies = _duplicates(groups, decoded.digests)
    if copies:
        log.warning(copies)
    present = {c for _, c in labelled}
    classes = [c for c in folder_classes if c in present]
    if len(classes) < len(folder_classes):
        empty = [c for c in folder_classes if c not in present]
        log.warning(f"mixmatch: classes with no readable labelled image, left out: {', '.join(empty)}")
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} classes with readable labelled images; it takes at least 2")
    unknown = sorted({c for _, c in test} - present, key=_natural_key)
    if unknown:
        raise DataError(f"the test images of {root} have classes the labelled images lack: {', '.join(unknown)}")

    index = {c: i for i, c in enumerate(classes)}

    def pick(entries: list[tuple[str, str]]) -> tuple[Tensor, Tensor]:
        rows = torch.as_tensor([row[n] for n, _ in entries], dtype=torch.int64)
        return images[rows], torch.as_tensor([index[c] for _, c in entries], dtype=torch.int64)

    train_x, train_y = pick(labelled)
    test_x, test_y = pick(test)
    pool = [row[n] for n in pool_files]
    return ImageDataset(
        "folder",
        train_x,
        train_y,
        test_x,
        test_y,
        classes,
        images[torch.as_tensor(pool, dtype=torch.int64)] if pool else None,
        files=[n for n, _ in labelled],
    )
