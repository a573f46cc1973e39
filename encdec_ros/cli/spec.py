"""``encdec spec init``: a starter signal spec from a bag, without writing YAML by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from encdec_ros.errors import SpecError


def register(groups: dict) -> None:
    """Add ``spec init``."""
    p = groups['spec'].add_parser(
        'init', help='write a starter signal spec from a bag (every numeric field)',
        description='Survey a bag and write a starter signal spec: every numeric field of the '
                    'chosen topics (all topics with numeric fields by default); covariances, '
                    'constant fields, absolute positions and time stamps are written commented '
                    'out with the reason; rate, window and stride are suggested from the '
                    "topics' measured rates. Example: encdec spec init my_bag --topics "
                    '/imu,/joint_states --out my_spec.yaml')
    p.add_argument('bag', help='rosbag2 directory, .db3/.mcap file or ROS 1 .bag')
    p.add_argument('--topics', metavar='/A,/B',
                   help='comma-separated topics (default: every topic with a numeric field)')
    p.add_argument('--out', default='spec.yaml',
                   help='spec file to write (default: spec.yaml; - prints it)')
    p.add_argument('--force', action='store_true', help='replace an existing spec file')
    p.set_defaults(func=_init)


def split_topics(text: str | None) -> list[str]:
    """``/a,/b`` as a list; a name without the leading slash gets one."""
    return [t if t.startswith('/') else f'/{t}'
            for t in (x.strip() for x in (text or '').split(',')) if t]


def _init(args: argparse.Namespace) -> int:
    from encdec_ros.io.specinit import starter_spec

    out = None if args.out == '-' else Path(args.out)
    if out is not None:
        if out.is_dir():
            raise SpecError(f'{out} is a directory; give --out a file name such as '
                            f'{out / "spec.yaml"}')
        if out.exists() and not args.force:
            raise SpecError(f'{out} already exists; pass --force to replace it or choose '
                            'another --out')
        if not out.parent.is_dir():
            raise SpecError(f'the directory of {out} does not exist; create it or choose '
                            'another --out')
    starter = starter_spec(args.bag, topics=split_topics(args.topics) or None,
                           name=Path(args.bag).stem)
    text = starter.yaml_text()
    if out is None:
        sys.stdout.write(text)
        return 0
    out.write_text(text)
    for line in starter.summary():
        print(line)
    print(f'wrote {out}; edit it if needed, then: encdec train anomaly --bag {args.bag} '
          f'--spec {out} --out MODEL')
    return 0
