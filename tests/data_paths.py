"""Where the real data beside the checkout lives; tests that need it skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get('ENCDEC_SHARED_DATA', ROOT.parent / 'shared' / 'data'))


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'{path} is absent (real data beside the checkout; set ENCDEC_SHARED_DATA '
                    'to point elsewhere)')
    return path
