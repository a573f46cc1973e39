"""``encdec inspect``: what a bag holds, and which fields of a spec resolve in it."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def register(groups: dict) -> None:
    """Add ``inspect``."""
    p = groups['top'].add_parser(
        'inspect', help='list a bag\'s topics, types, counts and rates; check a spec against it',
        description='List the topics of a bag with their types, message counts and rates, and '
                    'with --spec show which fields of a signal spec resolve and which do not. '
                    'Given several bags (or a folder, a quoted glob pattern or a .txt list of '
                    'bags), sum them up from their metadata: bags, hours, messages per topic, '
                    'and with --spec in which bags the spec resolves.')
    p.add_argument('bag', nargs='+',
                   help='rosbag2 directory, .db3/.mcap file or ROS 1 .bag; or several, a folder '
                        'of bags, a quoted glob pattern or a .txt list of bags')
    p.add_argument('--spec', help='a signal spec YAML to check against the bag(s)')
    p.add_argument('--each', action='store_true',
                   help='with several bags: also one line per bag (default: up to 20 bags)')
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from encdec_ros.errors import EncdecError
    from encdec_ros.io.bag import BagSource, bind_spec, read_streams
    from encdec_ros.io.bagset import expand_bags
    from encdec_ros.io.spec import SignalSpec

    spec = SignalSpec.load(args.spec) if args.spec else None
    bags = expand_bags(args.bag, option='BAG')
    if len(bags) > 1:
        return _totals(bags, spec, each=args.each)
    with BagSource(bags[0]) as bag:
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
            ts = np.sort(np.asarray(times[name], dtype=np.int64))
            rate, trouble = _rate(ts)
            note = bag.definition_source(name)
            if note == 'none':
                note = 'none (not a standard type)'
            shown = f'{rate:>9.2f}' if rate == rate else f'{"?" if trouble else "-":>9}'
            print(f'{name:<{width}}  {info.type:<40} {len(ts):>8} {shown}  {note}')
            if trouble:
                print(f'{"":<{width}}  ! {trouble}')
            if info.meta_count is not None and len(ts) < info.meta_count:
                print(f'{"":<{width}}  ! read {len(ts)} of the {info.meta_count} messages '
                      'metadata.yaml lists')
        for text in bag.warnings:
            print(f'warning: {text}')
        if spec is None:
            print(f'\nno --spec given; `encdec spec init {args.bag}` writes a starter spec with '
                  'every numeric field of these topics')
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
        if failed:
            print(f'{failed} field(s) do not resolve')
            return 1
        # the fields resolve one by one; now the spec as a whole, as train and eval read it
        try:
            resolved = bind_spec(spec, bag)
            _, warnings = read_streams(bag, resolved, show_progress=False)
        except EncdecError as err:
            print(f'  FAIL  {str(err).replace(f"{spec.source}: ", "")}')
            print('all fields resolve one by one, but the spec as a whole does not fit this bag')
            return 1
        for text in warnings:
            if text not in bag.warnings:     # those are printed above
                print(f'  warn  {text}')
        print('all fields resolve')
        return 0


def _totals(bags: list, spec: Any, *, each: bool) -> int:
    """Sum a set of bags up from their metadata and indexes (no message is read)."""
    from encdec_ros.errors import EncdecError
    from encdec_ros.io.bag import BagSource, bind_spec
    from encdec_ros.progress import progress

    topics: dict[str, dict[str, Any]] = {}
    rows, failed, fits, misfits = [], [], 0, []
    start, end, seconds, messages = None, None, 0.0, 0
    kinds: dict[str, int] = {}
    for path in progress(bags, total=len(bags), desc='bags', unit='bag', min_total=50):
        try:
            with BagSource(path) as bag:
                span = bag.time_range()
                count = sum(t.count for t in bag.topics.values())
                length = (span[1] - span[0]) * 1e-9 if span else 0.0
                kinds[bag.storage_id] = kinds.get(bag.storage_id, 0) + 1
                for name, info in bag.topics.items():
                    entry = topics.setdefault(name, {'type': info.type, 'count': 0, 'bags': 0,
                                                     'seconds': 0.0})
                    entry['count'] += info.count
                    entry['bags'] += 1
                    entry['seconds'] += length
                if spec is not None:
                    try:
                        bind_spec(spec, bag)
                        fits += 1
                    except EncdecError as err:
                        misfits.append((path, str(err)))
        except EncdecError as err:
            failed.append((path, str(err)))
            continue
        if span:
            start = span[0] if start is None else min(start, span[0])
            end = span[1] if end is None else max(end, span[1])
        seconds += length
        messages += count
        rows.append((str(path), length, count))
    read = len(bags) - len(failed)
    print(f'bags:     {len(bags)}' + (f' ({len(failed)} unreadable)' if failed else '')
          + f', {", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))}')
    print(f'duration: {seconds / 3600:.3f} h in all ({seconds:.1f} s), {messages} messages')
    if start is not None:
        first = datetime.fromtimestamp(start * 1e-9, tz=timezone.utc)
        last = datetime.fromtimestamp(end * 1e-9, tz=timezone.utc)
        print(f'recorded: {first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S} UTC')
    if each or len(bags) <= 20:
        width = max(len(r[0]) for r in rows) if rows else 3
        print(f'\n{"bag":<{width}}  {"seconds":>9} {"messages":>9}')
        for name, length, count in rows:
            print(f'{name:<{width}}  {length:>9.1f} {count:>9}')
    width = max([len(t) for t in topics] + [5])
    print(f'\n{"topic":<{width}}  {"type":<40} {"messages":>9} {"bags":>5} {"hours":>7} '
          f'{"rate Hz":>9}')
    for name in sorted(topics):
        t = topics[name]
        rate = t['count'] / t['seconds'] if t['seconds'] > 0 else float('nan')
        shown = f'{rate:>9.2f}' if rate == rate else f'{"-":>9}'
        print(f'{name:<{width}}  {t["type"]:<40} {t["count"]:>9} {t["bags"]:>5} '
              f'{t["seconds"] / 3600:>7.3f} {shown}')
    for path, text in failed[:5]:
        print(f'unreadable: {text}')
    if len(failed) > 5:
        print(f'... and {len(failed) - 5} more unreadable bags')
    if spec is not None:
        print(f'\nspec {spec.source}: resolves in {fits} of {read} readable bags')
        for path, text in misfits[:5]:
            print(f'  FAIL  {path}: {text}')
        if len(misfits) > 5:
            print(f'  ... and {len(misfits) - 5} more')
    return 1 if failed or misfits else 0


def _rate(stamps_ns: np.ndarray) -> tuple[float, str]:
    """A topic's message rate from its sorted log times, and why it is unknown where it is."""
    from encdec_ros.io.align import repeats, stalled

    n = stamps_ns.size
    if n < 2:
        return float('nan'), ''
    span = int(stamps_ns[-1] - stamps_ns[0])
    if span <= 0 or stalled(stamps_ns):
        return float('nan'), (f'log times repeat in {repeats(stamps_ns)} of {n} messages, so '
                              'no rate can be measured')
    rate = (n - 1) / (span * 1e-9)
    if rate > MAX_RATE_HZ:
        return float('nan'), (f'{n} messages lie within {span} ns of log time, so those times '
                              'are not real and no rate can be measured')
    return rate, ''


# No ROS topic publishes faster than this: a higher rate means the log times are not real.
MAX_RATE_HZ = 1e6
