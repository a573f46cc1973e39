"""Progress bars for long work: tqdm on a terminal, silent elsewhere (logs, CI, tests)."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar('T')


def progress(items: Iterable[T], *, total: int | None = None, desc: str = '',
             unit: str = 'it', enable: bool | None = None, min_total: int = 20_000
             ) -> Iterator[T]:
    """Wrap an iterable in a progress bar on stderr.

    ``enable=None`` shows the bar only when stderr is a terminal and the work is long
    (``total`` at least ``min_total``); True forces it, False hides it.
    """
    if enable is None:
        enable = sys.stderr.isatty() and (total is None or total >= min_total)
    if not enable:
        return iter(items)
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional on a robot
        return iter(items)
    return iter(tqdm(items, total=total, desc=desc, unit=unit, unit_scale=True,
                     dynamic_ncols=True, leave=False, file=sys.stderr))
