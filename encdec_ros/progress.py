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


class Counter:
    """A progress bar advanced by counts (``update(n)``), for work done in batches; shown
    under the same rule as :func:`progress`. Use as a context manager."""

    def __init__(self, *, total: int | None = None, desc: str = '', unit: str = 'it',
                 enable: bool | None = None, min_total: int = 20_000) -> None:
        if enable is None:
            enable = sys.stderr.isatty() and (total is None or total >= min_total)
        self._bar = None
        if enable:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional on a robot
                return
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                             dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, count: int) -> None:
        """Advance by ``count`` items."""
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> 'Counter':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
