"""``encdec bench``: the runtime's costs measured side by side with their floors, in one run."""

from __future__ import annotations

import argparse
import sys

from encdec_ros.errors import ConfigError


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add the top-level ``bench`` subcommand."""
    from encdec_ros.bench import DEFAULT_SECTIONS, SECTIONS

    parser = groups['top'].add_parser(
        'bench', help='measure subscriber CPU, latency, bag ingest and inference against '
                      'their floors',
        description='Measure, side by side in one run: (subscriber) CPU per message of a '
                    'bare typed and a bare raw rclpy subscriber and of each node, the '
                    'publisher in another process; (latency) publish to decision at fixed '
                    'rates; (ingest) read_bag against rosbags\' per-message deserialise; '
                    '(inference) ONNX Runtime against torch eager per model kind; (soak) RSS '
                    'of the anomaly node over a bounded run. Prints tables (or JSON). The '
                    'ROS sections run in their own ROS domain and namespace, so a robot\'s '
                    'topics are not touched. Figures are noisy on a shared machine: compare '
                    'the ratios.')
    parser.add_argument('--only', default=','.join(DEFAULT_SECTIONS), metavar='SECTIONS',
                        help=f'comma-separated sections out of {", ".join(SECTIONS)} '
                             '(default: %(default)s)')
    parser.add_argument('--rounds', type=int, default=2, metavar='N',
                        help='interleaved rounds per comparison (default: %(default)s)')
    parser.add_argument('--seconds', type=float, default=4.0, metavar='S',
                        help='seconds per subscriber measurement (default: %(default)s)')
    parser.add_argument('--sub-rate', type=float, default=1000.0, metavar='HZ',
                        help='IMU rate of the subscriber section, JointState and WrenchStamped '
                             'at half of it; 0: as fast as the publisher can (default: '
                             '%(default)s)')
    parser.add_argument('--latency-seconds', type=float, default=5.0, metavar='S',
                        help='seconds per latency measurement (default: %(default)s)')
    parser.add_argument('--rates', default='200,1000', metavar='HZ',
                        help='input rates of the latency section (default: %(default)s)')
    parser.add_argument('--messages', type=int, default=50_000, metavar='N',
                        help='messages per synthetic bag in the ingest section '
                             '(default: %(default)s)')
    parser.add_argument('--bag', action='append', default=[], metavar='PATH',
                        help='also measure ingest of this bag (with --spec); repeatable')
    parser.add_argument('--spec', default='', metavar='YAML',
                        help='signal spec for the bags given with --bag')
    parser.add_argument('--batches', default='1,32,256', metavar='SIZES',
                        help='batch sizes of the inference section (default: %(default)s)')
    parser.add_argument('--soak-seconds', type=float, default=120.0, metavar='S',
                        help='length of the soak section (default: %(default)s)')
    parser.add_argument('--streams', default='1,8,32', metavar='NS',
                        help='streams section: numbers of streams one anomaly node serves '
                             '(default: %(default)s)')
    parser.add_argument('--stream-rate', type=float, default=1000.0, metavar='HZ',
                        help='streams section: Imu rate of each stream, JointState and '
                             'WrenchStamped at half of it (default: %(default)s)')
    parser.add_argument('--domain-id', type=int, default=None, metavar='ID',
                        help='ROS domain of the ROS sections (default: one chosen from the '
                             'process id, never ROS_DOMAIN_ID)')
    parser.add_argument('--json', nargs='?', const='-', default=None, metavar='PATH',
                        help='write the results as JSON to PATH (- or no value: stdout, '
                             'instead of the tables)')
    parser.set_defaults(func=run)


def options_from(args: argparse.Namespace):  # -> BenchOptions
    """Check the arguments and build the bench options."""
    from encdec_ros.bench import SECTIONS, BenchOptions

    sections = tuple(s.strip() for s in args.only.split(',') if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ConfigError(f'--only {args.only!r}: unknown section {unknown[0] if unknown else ""!r}'
                          f'; choose from {", ".join(SECTIONS)}')
    try:
        rates = tuple(float(r) for r in args.rates.split(','))
        batches = tuple(int(b) for b in args.batches.split(','))
        streams = tuple(int(n) for n in args.streams.split(','))
    except ValueError:
        raise ConfigError(f'--rates {args.rates!r}, --batches {args.batches!r} and --streams '
                          f'{args.streams!r} must be comma-separated numbers, e.g. --rates '
                          '200,1000 --batches 1,32 --streams 1,8') from None
    if any(r <= 0 or r > 20_000 for r in rates) or any(b < 1 for b in batches) or \
            not 0 <= args.sub_rate <= 20_000:
        raise ConfigError('--rates must lie in (0, 20000] Hz, --sub-rate in [0, 20000] and '
                          '--batches be >= 1')
    for name in ('rounds', 'messages'):
        if getattr(args, name) < 1:
            raise ConfigError(f'--{name} must be at least 1')
    for name in ('seconds', 'latency_seconds', 'soak_seconds'):
        if not getattr(args, name) > 0:
            raise ConfigError(f'--{name.replace("_", "-")} must be a positive number of seconds')
    if any(not 1 <= n <= 256 for n in streams) or not 0 < args.stream_rate <= 20_000:
        raise ConfigError('--streams must be between 1 and 256 streams and --stream-rate in '
                          '(0, 20000] Hz')
    if args.bag and not args.spec:
        raise ConfigError('--bag needs --spec: the signal spec that names the fields to read')
    if args.domain_id is not None and not 0 <= args.domain_id <= 232:
        raise ConfigError(f'--domain-id {args.domain_id} is out of range; use 0 to 232')
    return BenchOptions(
        sections=sections, rounds=args.rounds, seconds=args.seconds, sub_rate=args.sub_rate,
        latency_seconds=args.latency_seconds, rates=rates, messages=args.messages,
        bags=tuple(args.bag), spec=args.spec, batches=batches,
        soak_seconds=args.soak_seconds, streams=streams, stream_rate=args.stream_rate,
        domain_id=args.domain_id,
        log=lambda text: print(text, file=sys.stderr, flush=True))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print (or write) its figures."""
    from encdec_ros.bench import run as run_bench
    from encdec_ros.bench import tables, to_json

    options = options_from(args)
    results = run_bench(options)
    if args.json is None or args.json != '-':
        print(tables(results))
    if args.json == '-':
        print(to_json(results))
    elif args.json:
        with open(args.json, 'w', encoding='utf-8') as fh:
            fh.write(to_json(results) + '\n')
        print(f'wrote {args.json}')
    return 0
