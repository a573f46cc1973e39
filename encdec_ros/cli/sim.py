"""``encdec sim``: fly the synthetic hexacopter and write a rosbag2 with labelled faults."""

from __future__ import annotations

import argparse
import os
import time

# The same kinds as training.sim.FAULT_KINDS, repeated so that --help needs no scipy.
FAULT_CHOICES = ('stuck', 'bias_drift', 'spikes', 'vibration', 'motor_degradation',
                 'motor_failure')


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add the top-level ``sim`` subcommand."""
    parser = groups['top'].add_parser(
        'sim', help='simulate a hexacopter flight and write a rosbag2 with labelled faults',
        description='Simulate a hexacopter (PX4 hexa-X) flying a random trajectory in gusty '
                    'wind and write a rosbag2 (/imu, /imu/clean, /motors, /wrench_cmd, '
                    '/actuator_cmd and a label topic) plus labels.csv. The same seed gives '
                    'the same data. With --flights or --vehicles, a fleet: one bag per flight '
                    '(seeds SEED, SEED+1, ...; flight i on vehicle i %% VEHICLES, vehicles '
                    'drawn around the nominal one) in the folder --out, with fleet.yaml and '
                    'bags.txt, simulated in parallel.')
    parser.add_argument('--out', required=True, metavar='PATH',
                        help='bag directory (or, for a fleet, folder) to create (must not '
                             'exist)')
    parser.add_argument('--duration', type=float, default=120.0, metavar='S',
                        help='seconds of flight (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, metavar='N',
                        help='random seed (default: %(default)s)')
    parser.add_argument('--faults', default='none', metavar='KINDS',
                        help='all, none, or a comma-separated list of '
                             f'{", ".join(FAULT_CHOICES)} (default: %(default)s)')
    parser.add_argument('--fault-duration', type=float, default=None, metavar='S',
                        help='seconds each fault lasts (default: 8-15 s at random)')
    parser.add_argument('--payload', type=float, default=0.0, metavar='KG',
                        help='mass picked up mid-flight, a normal change of operating point '
                             '(default: none)')
    parser.add_argument('--payload-at', type=float, default=None, metavar='S',
                        help='when the payload is picked up (default: half-way)')
    parser.add_argument('--warmup', type=float, default=0.0, metavar='S',
                        help='time constant of a warm-up drift of the IMU biases and motor '
                             'currents, e.g. 600 (default: none)')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3',
                        help='rosbag2 storage format (default: %(default)s)')
    g = parser.add_argument_group('a fleet (many flights at once)')
    g.add_argument('--flights', type=int, default=1, metavar='N',
                   help='flights to write, seeds SEED .. SEED+N-1 (default: %(default)s)')
    g.add_argument('--vehicles', type=int, default=1, metavar='V',
                   help='vehicles: 0 is the nominal hexacopter, the others have mass, arm '
                        'length, inertia, rotor and motor constants drawn around it '
                        '(default: %(default)s)')
    g.add_argument('--jitter', type=float, default=0.1, metavar='F',
                   help="spread of each vehicle's constants, a fraction (default: "
                        '%(default)s)')
    g.add_argument('--jobs', type=int, metavar='N',
                   help='flights simulated at once (default: the number of CPUs)')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, write the bag and print a summary; returns the exit code."""
    from encdec_ros.errors import BagError
    from encdec_ros.modeldir import check_output_dir

    if os.path.lexists(args.out):  # fail before spending time on the flight
        msg = f'output path {args.out} already exists; remove it or choose another --out'
        raise BagError(msg)
    check_output_dir(args.out, what='bag directory', error=BagError)

    from training.sim import TOPICS, SimConfig, parse_faults, simulate, write_bag

    if args.flights != 1 or args.vehicles != 1:
        return _fleet(args, parse_faults(args.faults))
    t_start = time.perf_counter()
    config = SimConfig(duration_s=args.duration, seed=args.seed,
                       faults=parse_faults(args.faults), fault_duration_s=args.fault_duration,
                       payload_kg=args.payload, payload_at_s=args.payload_at,
                       warmup_s=args.warmup, storage=args.storage)
    result = simulate(config, progress=True)
    t_sim = time.perf_counter()
    path = write_bag(result, args.out, storage=config.storage)
    t_end = time.perf_counter()

    counts = result.counts()
    print(f'wrote {path} ({config.storage}): {config.duration_s:g} s of flight, '
          f'seed {config.seed}')
    width = max(len(t) for t in TOPICS)
    print(f'  {"topic":<{width}}  {"type":<31} {"messages":>8}  {"rate":>6}')
    for topic, msgtype in TOPICS.items():
        rate = counts[topic] / config.duration_s
        print(f'  {topic:<{width}}  {msgtype:<31} {counts[topic]:>8}  {rate:>4.0f} Hz')
    if result.intervals:
        t0 = int(result.imu_stamp_ns[0])
        print(f'  faults ({len(result.intervals)}), times from the start, written to '
              f'{path / "labels.csv"}:')
        print(f'    {"start_s":>8} {"end_s":>8}  {"kind":<18} detail')
        for iv in result.intervals:
            print(f'    {(iv.start_ns - t0) * 1e-9:>8.2f} {(iv.end_ns - t0) * 1e-9:>8.2f}  '
                  f'{iv.kind:<18} {iv.detail}')
    else:
        print('  faults: none')
    print(f'  wall time {t_end - t_start:.1f} s (simulate {t_sim - t_start:.1f} s, '
          f'write {t_end - t_sim:.1f} s)')
    return 0


def _fleet(args: argparse.Namespace, faults: tuple[str, ...]) -> int:
    """Write a fleet of flights into the folder ``args.out``."""
    from training.simfleet import BAG_LIST, FLEET_YAML, plan_fleet, write_fleet

    t_start = time.perf_counter()
    flights = plan_fleet(flights=args.flights, seed=args.seed, vehicles=args.vehicles,
                         jitter=args.jitter, duration_s=args.duration, faults=faults,
                         fault_duration_s=args.fault_duration, storage=args.storage)
    manifest = write_fleet(flights, args.out, jobs=args.jobs)
    hours = sum(f['duration_s'] for f in manifest['flights']) / 3600
    messages = sum(f['messages'] for f in manifest['flights'])
    print(f'wrote {len(flights)} flights ({hours:.2f} h, {messages} messages, '
          f'{args.vehicles} vehicle(s), {args.storage}) to {args.out} in '
          f'{time.perf_counter() - t_start:.1f} s with {manifest["jobs"]} process(es)')
    for v, params in manifest['vehicles'].items():
        print(f'  vehicle {v}: mass {params["mass_kg"]:.3g} kg, arm {params["arm_length_m"]:.3g} '
              f'm, thrust coefficient {params["thrust_coeff"]:.3g}, motor time constant '
              f'{params["motor_time_constant_s"]:.3g} s')
    faulty = sum(bool(f['faults']) for f in manifest['flights'])
    if faulty:
        print(f'  {faulty} flight(s) with faults; each bag has its labels.csv')
    print(f'  {args.out}/{FLEET_YAML} lists them; train on all with --bag {args.out} or '
          f'--bag {args.out}/{BAG_LIST}')
    return 0
