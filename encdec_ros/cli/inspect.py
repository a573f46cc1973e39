"""``encdec inspect``: what a bag holds, and which fields of a spec resolve in it."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone


def register(groups: dict) -> None:
    """Add ``inspect``."""
    p = groups['top'].add_parser(
        'inspect', help='list a bag\'s topics, types, counts and rates; check a spec against it',
        description='List the topics of a bag with their types, message counts and rates, and '
                    'with --spec show which fields of a signal spec resolve and which do not.')
    p.add_argument('bag', help='rosbag2 directory, .db3/.mcap file or ROS 1 .bag')
    p.add_argument('--spec', help='a signal spec YAML to check against the bag')
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from ..bag import BagSource, bind_spec
    from ..errors import EncdecError
    from ..spec import SignalSpec

    spec = SignalSpec.load(args.spec) if args.spec else None
    with BagSource(args.bag) as bag:
        times: dict[str, list[int]] = {t: [] for t in bag.topics}
        for topic, stamp, _ in bag.raw_messages():
            times[topic].append(stamp)
        all_times = [t for ts in times.values() for t in ts]
        print(f'bag:      {bag.path}')
        print(f'format:   {bag.kind} ({bag.storage_id})'
              + (f', recorded on ROS 2 {bag.distro}' if bag.distro else ''))
        if all_times:
            start, end = min(all_times), max(all_times)
            when = datetime.fromtimestamp(start * 1e-9, tz=timezone.utc)
            print(f'start:    {when:%Y-%m-%d %H:%M:%S} UTC, duration {(end - start) * 1e-9:.2f} s, '
                  f'{len(all_times)} messages')
        else:
            print('messages: none')
        width = max([len(t) for t in bag.topics] + [5])
        print(f'\n{"topic":<{width}}  {"type":<40} {"count":>8} {"rate Hz":>9}  definition')
        for name in sorted(bag.topics):
            info = bag.topics[name]
            ts = np.asarray(times[name], dtype=np.int64)
            rate = (len(ts) - 1) / ((ts[-1] - ts[0]) * 1e-9) if len(ts) > 1 and \
                ts[-1] > ts[0] else float('nan')
            note = 'in bag' if info.has_definition else 'standard'
            print(f'{name:<{width}}  {info.type:<40} {len(ts):>8} {rate:>9.2f}  {note}')
            if info.meta_count is not None and len(ts) < info.meta_count:
                print(f'{"":<{width}}  ! read {len(ts)} of the {info.meta_count} messages '
                      'metadata.yaml lists')
        for text in bag.warnings:
            print(f'warning: {text}')
        if spec is None:
            return 0
        print(f'\nspec {args.spec}: {spec.rate_hz:g} Hz, window {spec.window}, '
              f'stride {spec.stride}')
        failed = 0
        for topic in spec.topics:
            single = SignalSpec(topics=(topic,), rate_hz=spec.rate_hz, window=spec.window,
                                stride=spec.stride, source=spec.source)
            for entry in topic.fields:
                one = SignalSpec(topics=(type(topic)(topic.name, (entry,), topic.type,
                                                     topic.stamp),),
                                 rate_hz=single.rate_hz, window=single.window,
                                 stride=single.stride, source=spec.source)
                try:
                    resolved = bind_spec(one, bag)
                    names = resolved.channels
                    print(f'  ok    {topic.name} {entry.path.text} -> {len(names)} channel'
                          f'{"s" if len(names) != 1 else ""}: {", ".join(names[:6])}'
                          + (' ...' if len(names) > 6 else ''))
                except EncdecError as err:
                    failed += 1
                    text = str(err).replace(f'{spec.source}: ', '')
                    print(f'  FAIL  {topic.name} {entry.path.text}: {text}')
        print(f'{"all fields resolve" if not failed else f"{failed} field(s) do not resolve"}')
        return 1 if failed else 0
