"""Sets of bags: directories, glob patterns and list files, expanded into single bags.

Every ``--bag`` of ``encdec train``, ``encdec eval`` and ``encdec inspect`` goes through
:func:`expand_bags`, which turns each argument into bags:

- a bag (a rosbag2 directory, a ``.db3`` / ``.mcap`` file or a ROS 1 ``.bag`` file) is kept
  as it is (a path that does not exist is kept too, so that the reader says why);
- a directory that is not a bag is searched recursively: every rosbag2 directory under it
  is one bag (its own storage files are not counted again), and every other ``.db3``,
  ``.mcap`` or ``.bag`` file is one bag;
- a glob pattern (``flights/*/``, ``'logs/**/*.mcap'``; quote it so that the shell leaves
  ``**`` alone) is expanded, each match as above (a storage file of a rosbag2 directory
  stands for its directory, once); a pattern that matches nothing is an error;
- a text file ending in ``.txt`` or ``.list`` (or any file named with a leading ``@``, as in
  ``@bags``) lists bags, directories or patterns, one per line; ``#`` starts a comment,
  relative paths are taken from the list file's folder.

A directory is a rosbag2 bag when it holds ``metadata.yaml``, or when it holds no
``metadata.yaml`` but storage files named as rosbag2 names the files of a split bag
(``<directory name>_<n>.db3`` / ``.mcap``): the reader then reads them without the metadata
(as ``ros2 bag reindex`` would restore it). Any other ``.db3`` / ``.mcap`` file is a bag of
its own. The result is sorted within each argument and free of repeats.

:func:`bag_identity` lists what identifies a bag's content without reading it (paths, sizes
and modification times of its files): the shard cache of ``training.data`` is keyed by it.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from encdec_ros.errors import BagError

STORAGE_SUFFIXES = ('.db3', '.mcap')
BAG_SUFFIXES = STORAGE_SUFFIXES + ('.bag',)
LIST_SUFFIXES = ('.txt', '.list')
GLOB_CHARS = re.compile(r'[*?\[]')
MAX_LIST_DEPTH = 4
"""List files may name list files, this many levels deep."""


def is_rosbag2_dir(path: Path) -> bool:
    """Whether ``path`` is a rosbag2 directory (see the module docstring)."""
    if (path / 'metadata.yaml').is_file():
        return True
    try:
        files = [p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file()]
    except OSError:
        return False
    split = re.compile(re.escape(path.name) + r'_\d+$')
    return bool(files) and all(split.fullmatch(p.stem) for p in files)


def expand_bags(args: Sequence[str | Path] | str | Path, *, option: str = '--bag'
                ) -> list[Path]:
    """Expand bags, directories, glob patterns and list files into a list of bags.

    Args:
        args: What the user gave (one item or several).
        option: How the user named them, for the messages.

    Returns:
        The bags, each once, in the order of ``args`` (sorted within each argument).

    Raises:
        BagError: One sentence for an empty list, a pattern or directory without bags, or an
            unreadable list file.
    """
    if isinstance(args, (str, Path)):
        args = [args]
    out: list[Path] = []
    seen: set[str] = set()
    for arg in args:
        for path in _expand_one(str(arg), option=option, base=None, depth=0):
            key = os.path.normpath(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                out.append(path)
    if not out:
        raise BagError('no bag given; pass at least one bag, folder, pattern or list file'
                       + (f' with {option}' if option.startswith('--') else ''))
    # a storage file given beside the rosbag2 directory that holds it would be read twice
    dirs = {os.path.normpath(os.path.abspath(p)) for p in out if p.is_dir()}
    return [p for p in out if not (p.is_file() and p.suffix in STORAGE_SUFFIXES and
                                   os.path.normpath(os.path.abspath(p.parent)) in dirs)]


def _expand_one(text: str, *, option: str, base: Path | None, depth: int) -> list[Path]:
    text = text.strip()
    listed = text.startswith('@')
    if listed:
        text = text[1:]
    path = Path(os.path.expanduser(text))
    if base is not None and not path.is_absolute():
        path = base / path
    if listed or (path.is_file() and path.suffix.lower() in LIST_SUFFIXES):
        return _read_list(path, option=option, depth=depth)
    if path.is_dir():
        if is_rosbag2_dir(path):
            return [path]
        found = _walk(path)
        if not found:
            raise BagError(f'directory {path} holds no rosbag2 directory and no .db3, .mcap or '
                           '.bag file (searched recursively); pass a bag or a folder of bags')
        return found
    if path.exists() or not GLOB_CHARS.search(str(path)):
        return [path]           # a bag, or a path the reader will say is missing
    matches = sorted(glob.glob(str(path), recursive=True))
    if not matches:
        raise BagError(f'the {_named(option)}pattern {text} matches nothing; check the path, '
                       'and quote the pattern so that the shell passes it unexpanded')
    out: list[Path] = []
    for match in matches:
        m = Path(match)
        if m.is_dir():
            out.extend([m] if is_rosbag2_dir(m) else _walk(m))
        elif m.suffix in STORAGE_SUFFIXES and is_rosbag2_dir(m.parent):
            out.append(m.parent)        # a storage file of a bag: the bag, once
        elif m.suffix in BAG_SUFFIXES:
            out.append(m)
    if not out:
        raise BagError(f'the {_named(option)}pattern {text} matches {len(matches)} path(s) '
                       'but no bag (rosbag2 directory, .db3, .mcap or .bag); make it match '
                       'the bags themselves')
    return out


def _walk(root: Path) -> list[Path]:
    """Every bag under ``root`` (not ``root`` itself), sorted; bag directories not entered."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            if is_rosbag2_dir(sub):
                out.append(sub)
            elif not name.startswith('.'):     # caches, .git
                keep.append(name)
        dirnames[:] = keep
        out.extend(here / f for f in sorted(filenames) if Path(f).suffix in BAG_SUFFIXES)
    return sorted(out, key=lambda p: p.as_posix())


def _read_list(path: Path, *, option: str, depth: int) -> list[Path]:
    if depth >= MAX_LIST_DEPTH:
        raise BagError(f'list file {path} is nested more than {MAX_LIST_DEPTH} levels deep in '
                       'other list files; name the bags in fewer levels')
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except FileNotFoundError:
        msg = f'{_named(option)}list file {path} does not exist; check the path'
        raise BagError(msg) from None
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, 'strerror', None) or 'not a text file'
        raise BagError(f'{_named(option)}list file {path} cannot be read ({why}); pass a text '
                       'file with one bag per line') from None
    out: list[Path] = []
    for number, line in enumerate(lines, 1):
        entry = re.sub(r'(^|\s)#.*$', '', line).strip()
        if not entry:
            continue
        try:
            found = _expand_one(entry, option=option, base=path.parent, depth=depth + 1)
        except BagError as err:
            raise BagError(f'{path} line {number}: {err}') from None
        missing = [p for p in found if not p.exists()]
        if missing:
            raise BagError(f'{path} line {number}: {missing[0]} does not exist; fix the line or '
                           'remove it')
        out.extend(found)
    if not out:
        raise BagError(f'list file {path} names no bag; write one bag, folder or pattern per '
                       'line (# starts a comment)')
    return out


def bag_identity(path: str | Path) -> list[tuple[str, int, int]]:
    """(absolute path, size in bytes, modification time in ns) of every file of a bag.

    A rosbag2 directory contributes each file directly in it (storage files, metadata.yaml,
    labels.csv); a single file contributes itself and its ``<stem>.labels.csv`` sidecar.
    Changing, adding or touching any of them changes the identity.
    """
    path = Path(path).resolve()
    if path.is_dir():
        files: Iterable[Path] = sorted(p for p in path.iterdir() if p.is_file())
    else:
        side = path.with_name(f'{path.stem}.labels.csv')
        files = [path] + ([side] if side.is_file() else [])
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), int(st.st_size), int(st.st_mtime_ns)))
    if not out:
        raise BagError(f'bag {path} holds no file; point at a bag with its storage files')
    return out


def unique_names(bags: Sequence[str | Path]) -> list[str]:
    """A short name per bag (for report folders): its own name, prefixed with its position
    where two bags share a name."""
    names = [Path(b).stem if Path(b).suffix in BAG_SUFFIXES else Path(b).name for b in bags]
    repeated = {n for n in names if names.count(n) > 1}
    return [f'{i:03d}_{n}' if n in repeated else n for i, n in enumerate(names)]


def _named(option: str) -> str:
    return f'{option} ' if option.startswith('--') else ''
