"""Spans of a recording: ``START:END`` in seconds from its first sample, or in rows.

A bound is a number of seconds (``:400``, ``60.5:``) or a whole number of rows with the suffix
``rows`` (``:400rows``, ``100rows:``): the messages of the spec's first topic, counted from 0,
which for a bag written by ``encdec bag from-csv`` are the CSV's data rows. ``:400rows`` keeps
rows 0 to 399 and ``400rows:`` starts at row 400, as a Python slice would; the two kinds of
bound may be mixed (``100rows:600``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from encdec_ros.errors import ConfigError

if TYPE_CHECKING:
    from encdec_ros.io.bag import Recording


@dataclass(frozen=True)
class Rows:
    """A span bound counted in rows (messages of the spec's first topic), from 0."""

    n: int

    def __str__(self) -> str:
        return f'{self.n}rows'


Bound = Union[float, Rows, None]
Span = tuple[Bound, Bound]
_ROWS = re.compile(r'^\s*(\d+)\s*(rows?|r)\s*$', re.IGNORECASE)


def parse_span(text: str | None) -> Span | None:
    """Parse ``START:END`` (seconds, or rows with a ``rows`` suffix; either side may be
    empty) into a tuple."""
    if text is None or text == '':
        return None
    start, sep, end = text.partition(':')
    if not sep:
        raise ConfigError(f'span {text!r} must be START:END in seconds from the start of the '
                          'bag, e.g. :400 (the first 400 s) or 60: (from 60 s on), or in rows '
                          'with a rows suffix, e.g. :400rows (the first 400 rows)')
    lo, hi = _bound(start, text), _bound(end, text)
    if lo is not None and hi is not None and type(lo) is type(hi) and \
            (hi.n <= lo.n if isinstance(lo, Rows) else hi <= lo):  # type: ignore[union-attr]
        raise ConfigError(f'span {text!r} ends before it starts; give START:END with END '
                          'after START')
    return lo, hi


def _bound(text: str, whole: str) -> Bound:
    if not text.strip():
        return None
    match = _ROWS.match(text)
    if match:
        return Rows(int(match[1]))
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f'span {whole!r} must hold numbers of seconds (e.g. 0:400) or whole '
                          'numbers of rows with a rows suffix (e.g. 0:400rows)') from None


def span_text(span: Span | None) -> str:
    """The span written back as ``START:END``."""
    if span is None:
        return ':'
    return ':'.join('' if b is None else str(b) if isinstance(b, Rows) else f'{b:g}'
                    for b in span)


def span_yaml(span: Span | None) -> list | None:
    """The span as plain data for model.yaml and report.json (rows bounds as text)."""
    if span is None:
        return None
    return [str(b) if isinstance(b, Rows) else b for b in span]


def resolve_span(span: Span | None, rec: Recording) -> tuple[float | None, float | None]:
    """The span in seconds from the recording's first aligned sample: a rows bound is the
    stamp of that message of the spec's first topic (past the last message: the end)."""
    if span is None:
        return None, None
    out: list[float | None] = []
    stamps = None
    for pos, bound in enumerate(span):
        if isinstance(bound, Rows):
            if stamps is None:
                stamps = rec.streams[rec.spec.topic_names[0]].stamps_ns
            if bound.n >= stamps.size:
                out.append(None if pos == 1 else
                           (int(stamps[-1]) - int(rec.times_ns[0])) * 1e-9 + 1.0
                           if stamps.size else None)
            else:
                out.append((int(stamps[bound.n]) - int(rec.times_ns[0])) * 1e-9)
        else:
            out.append(None if bound is None else float(bound))
    return out[0], out[1]
