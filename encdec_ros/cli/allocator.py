"""``encdec train allocator`` and ``encdec eval allocator``: the learned control allocator."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

BASELINES = ('exact', 'exact_bvls', 'pseudo_inverse', 'redistribution')


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``train allocator`` and ``eval allocator``."""
    p = groups['train'].add_parser(
        'allocator', help='train a control allocator (wrench -> actuator commands) through B',
        description='Train an MLP encoder that maps a wanted wrench to actuator commands '
                    'squashed into their limits, through the fixed effectiveness matrix B '
                    '(weighted wrench error, small effort term, distillation from the exact '
                    'optimum), on wrenches covering the attainable set and beyond; optionally '
                    'mixed with the wrenches a bag commanded. Exports ONNX (parity-checked) '
                    'and a model directory.')
    p.add_argument('--effectiveness', required=True, metavar='YAML',
                   help='effectiveness configuration, e.g. config/quad_x.yaml')
    p.add_argument('--out', required=True, metavar='DIR', help='model directory to write')
    p.add_argument('--bag', action='append', default=[], metavar='BAG',
                   help='rosbag2 whose commanded wrenches are mixed into training; or a '
                        'folder of bags, a quoted glob pattern or a .txt list (repeatable)')
    p.add_argument('--wrench-topic', default='/wrench_cmd', metavar='TOPIC',
                   help='WrenchStamped topic in --bag (default: %(default)s)')
    p.add_argument('--bag-fraction', type=float, default=0.5, metavar='F',
                   help='share of training wrenches drawn around the bag\'s (default: '
                        '%(default)s)')
    p.add_argument('--steps', type=int, default=12000, help='optimiser steps (default: '
                   '%(default)s)')
    p.add_argument('--samples', type=int, default=200_000,
                   help='training wrenches (default: %(default)s)')
    p.add_argument('--hidden', default='128,128,128', metavar='W,W,...',
                   help='hidden layer widths (default: %(default)s)')
    p.add_argument('--batch', type=int, default=1024, help='batch size (default: %(default)s)')
    p.add_argument('--lr', type=float, default=3e-3, help='learning rate (default: '
                   '%(default)s)')
    p.add_argument('--seed', type=int, default=0, help='random seed (default: %(default)s)')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (default: %(default)s, fastest for these small networks; '
                        '0: torch\'s default)')
    p.add_argument('--force', action='store_true', help='replace an existing --out')
    p.set_defaults(func=_train)

    i = groups['train'].add_parser(
        'effectiveness', help='identify the effectiveness matrix B from a flight bag',
        description='Estimate B from a bag of actuator commands (Float64MultiArray), rotor '
                    'speeds (JointState velocity) and IMU data, for the axes of a template '
                    'configuration, and write an effectiveness YAML (matrix form) that '
                    '`encdec train allocator` accepts. Prints the difference from the '
                    'template\'s B.')
    i.add_argument('--bag', required=True, metavar='BAG', help='flight log')
    i.add_argument('--template', required=True, metavar='YAML',
                   help='configuration giving axes, actuator names, limits and weights')
    i.add_argument('--mass', type=float, required=True, metavar='KG', help='vehicle mass')
    i.add_argument('--inertia', type=float, nargs=3, required=True, metavar=('JX', 'JY', 'JZ'),
                   help='diagonal inertia in the body frame, kg m^2')
    i.add_argument('--out', required=True, metavar='YAML', help='configuration to write')
    i.add_argument('--imu-topic', default='/imu', help='default: %(default)s')
    i.add_argument('--motors-topic', default='/motors', help='rotor speeds (default: '
                   '%(default)s)')
    i.add_argument('--actuator-topic', default='/actuator_cmd', help='commands (default: '
                   '%(default)s)')
    i.add_argument('--force', action='store_true', help='replace an existing --out')
    i.set_defaults(func=_identify)

    e = groups['eval'].add_parser(
        'allocator', help='score allocators against the exact optimum on held-out wrenches',
        description='Compare the learned allocator and the baselines (exact weighted '
                    'box-constrained least squares, pseudo-inverse with clipping, '
                    'redistributed pseudo-inverse) on held-out wrenches inside and outside '
                    'the attainable set: excess wrench error over the exact optimum, limit '
                    'violations, effort, latency at batch 1 and throughput at batch 1024. '
                    'Writes a JSON report and a PNG of errors against wrench magnitude.')
    e.add_argument('--model', metavar='DIR', help='allocator model directory')
    e.add_argument('--effectiveness', metavar='YAML',
                   help='configuration (default: the model\'s own; without --model only the '
                        'baselines are scored)')
    e.add_argument('--methods', default='all', metavar='LIST',
                   help='comma-separated: learned, exact, exact_bvls, pseudo_inverse, '
                        'redistribution, or all (default: %(default)s)')
    e.add_argument('--samples', type=int, default=6000, help='held-out wrenches (default: '
                   '%(default)s)')
    e.add_argument('--seed', type=int, default=None, help='held-out random stream')
    e.add_argument('--device', default='cpu', help='inference device for the learned '
                   'allocator (default: %(default)s)')
    e.add_argument('--report', metavar='JSON', help='report path (default: '
                   'allocator_eval_NAME.json)')
    e.add_argument('--plot', metavar='PNG', help='plot path (default: the report\'s, .png)')
    e.add_argument('--no-timing', action='store_true', help='skip latency and throughput')
    e.add_argument('--bag', action='append', metavar='BAG',
                   help='score the wrenches this bag commanded instead of the held-out set (at '
                        'most --samples of them, evenly spaced); or those of several (repeat, '
                        'a folder, a quoted glob pattern or a .txt list)')
    e.add_argument('--wrench-topic', default='/wrench_cmd', metavar='TOPIC',
                   help='WrenchStamped topic in --bag (default: %(default)s)')
    e.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from encdec_ros.allocation.allocators import Effectiveness
    from encdec_ros.cli import process_rank
    from encdec_ros.errors import ConfigError
    from encdec_ros.io.bagset import expand_bags
    from encdec_ros.modeldir import check_output_dir

    main = process_rank()[0] == 0          # under torchrun only rank 0 writes and prints
    out = check_output_dir(args.out, what='model directory', empty=not args.force) if main \
        else Path(args.out)
    try:
        hidden = tuple(int(x) for x in str(args.hidden).split(',') if x.strip())
    except ValueError:
        raise ConfigError(f'--hidden {args.hidden!r} is not a comma-separated list of widths; '
                          'write e.g. 128,128,128') from None
    eff = Effectiveness.load(args.effectiveness)
    bags = expand_bags(args.bag) if args.bag else []

    from training import distributed
    from training.allocator import (
        AllocatorTrainConfig,
        export_allocator,
        read_bag_wrenches,
        train_allocator,
    )

    cfg = AllocatorTrainConfig(hidden=hidden, steps=args.steps, batch=args.batch, lr=args.lr,
                               samples=args.samples, bag_fraction=args.bag_fraction,
                               seed=args.seed, threads=args.threads)
    dist = distributed.from_env()
    say = dist.say(print)
    try:
        bag_v, bag_info = None, {}
        if bags:
            bag_v = read_bag_wrenches(bags, args.wrench_topic, eff, dist=dist)
            bag_info = {'paths': [str(b) for b in bags], 'topic': args.wrench_topic,
                        'wrenches': int(len(bag_v))}
            names = ', '.join(str(b) for b in bags) if len(bags) <= 3 else f'{len(bags)} bags'
            say(f'{len(bag_v)} commanded wrenches from {names} ({args.wrench_topic})')
        say(eff.describe())
        t0 = time.perf_counter()
        result = train_allocator(eff, cfg, bag_v=bag_v, bag_info=bag_info, log=print,
                                 dist=dist)
    finally:
        dist.close()
    if not main:
        return 0
    result.figures['command'] = _command(args)
    result.figures['processes'] = dist.world
    export = export_allocator(result, out, overwrite=args.force)
    f = result.figures
    print(f'wrote {out}: held-out excess error over the exact optimum mean '
          f'{f["held_out_excess_mean"]:.3%}, p99 {f["held_out_excess_p99"]:.3%} of the largest '
          f'attainable wrench; ONNX parity {export["max_abs_diff"]:.2g} '
          f'({time.perf_counter() - t0:.0f} s)')
    print(f'next: encdec eval allocator --model {out}')
    return 0


def _identify(args: argparse.Namespace) -> int:
    import numpy as np

    from encdec_ros.allocation.allocators import Effectiveness
    from encdec_ros.errors import ConfigError
    from encdec_ros.modeldir import check_output_file

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f'{out} already exists; choose another --out or pass --force')
    check_output_file(out, what='effectiveness file')
    template = Effectiveness.load(args.template)

    from training.allocator import IdentifyConfig, identify_effectiveness, write_effectiveness_yaml

    cfg = IdentifyConfig(imu_topic=args.imu_topic, motors_topic=args.motors_topic,
                         actuator_topic=args.actuator_topic)
    eff, figures = identify_effectiveness(args.bag, template, mass_kg=args.mass,
                                          inertia_kgm2=args.inertia, config=cfg)
    command = ' '.join(shlex.quote(p) for p in [
        'encdec', 'train', 'effectiveness', '--bag', args.bag, '--template', args.template,
        '--mass', f'{args.mass:g}', '--inertia', *[f'{j:g}' for j in args.inertia],
        '--out', args.out])
    write_effectiveness_yaml(eff, out, comment=(
        f'Effectiveness identified from the flight log {args.bag}\n'
        f'(template {args.template}: axes, names, limits and weights; B estimated).\n'
        f'Rebuild: {command}'))
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    print(f'motors: time constant {figures["motor_time_constant_s"]:g} s, full-command speed '
          f'{", ".join(f"{s:.1f}" for s in figures["full_command_speed"])}')
    print(f'identified B (axes {" ".join(eff.axes)}):\n{eff.matrix}')
    print(f'template B:\n{template.matrix}')
    diff = figures['relative_difference_from_template']
    print('relative difference per axis: ' + ', '.join(f'{a} {v:.1%}' for a, v in diff.items())
          + f'; total {figures["relative_difference_total"]:.1%}')
    print(f'wrote {out}; next: encdec train allocator --effectiveness {out} --out DIR')
    return 0


def _command(args: argparse.Namespace) -> str:
    """The ``encdec train allocator`` command line that reproduces this model."""
    parts = ['encdec', 'train', 'allocator', '--effectiveness', args.effectiveness,
             '--out', args.out]
    for bag in args.bag:
        parts += ['--bag', bag, '--wrench-topic', args.wrench_topic]
    defaults = {'steps': 12000, 'samples': 200_000, 'hidden': '128,128,128', 'batch': 1024,
                'lr': 3e-3, 'seed': 0}
    for key, default in defaults.items():
        value = getattr(args, key)
        if value != default:
            parts += [f'--{key}', str(value)]
    return ' '.join(shlex.quote(str(p)) for p in parts)


def _eval(args: argparse.Namespace) -> int:
    from encdec_ros.allocation.allocators import (
        Effectiveness,
        ExactAllocator,
        LearnedAllocator,
        PseudoInverseAllocator,
        RedistributionAllocator,
        effectiveness_of_model,
    )
    from encdec_ros.allocation.evaluate import (
        HELD_OUT_SEED,
        bag_wrenches,
        evaluate,
        format_table,
        plot_errors,
        write_report,
    )
    from encdec_ros.errors import ConfigError
    from encdec_ros.modeldir import check_output_file

    if not args.model and not args.effectiveness:
        raise ConfigError('pass --model DIR (a trained allocator) or --effectiveness YAML '
                          '(baselines only)')
    eff = Effectiveness.load(args.effectiveness) if args.effectiveness else \
        effectiveness_of_model(args.model)
    wanted = [m.strip() for m in args.methods.split(',') if m.strip()]
    known = ('learned',) + BASELINES
    if wanted == ['all']:
        wanted = list(known) if args.model else list(BASELINES)
    bad = [m for m in wanted if m not in known]
    if bad:
        raise ConfigError(f'--methods names {bad[0]!r}; use {", ".join(known)} or all')
    if 'learned' in wanted and not args.model:
        raise ConfigError('method learned needs --model DIR')
    report_path = Path(args.report or f'allocator_eval_{eff.name}.json')
    plot_path = Path(args.plot) if args.plot else report_path.with_suffix('.png')
    check_output_file(report_path, what='report', option='--report')  # before the scoring
    check_output_file(plot_path, what='plot', option='--plot')
    makers = {
        'learned': lambda: LearnedAllocator(args.model, effectiveness=eff, device=args.device),
        'exact': lambda: ExactAllocator(eff),
        'exact_bvls': lambda: ExactAllocator(eff, solver='bvls'),
        'pseudo_inverse': lambda: PseudoInverseAllocator(eff),
        'redistribution': lambda: RedistributionAllocator(eff),
    }
    allocators = {name: makers[name]() for name in wanted}
    seed = HELD_OUT_SEED if args.seed is None else args.seed
    wrenches = None
    if args.bag:
        import numpy as np

        from encdec_ros.io.bagset import expand_bags

        bags = expand_bags(args.bag)
        wrenches = np.concatenate([bag_wrenches(b, args.wrench_topic, eff) for b in bags])
        if len(wrenches) > args.samples:
            wrenches = wrenches[np.linspace(0, len(wrenches) - 1, args.samples).astype(int)]
    report, curves = evaluate(eff, allocators, samples=args.samples, seed=seed,
                              timing=not args.no_timing, wrenches=wrenches)
    if args.bag:
        report['samples']['source'] = f'{" ".join(args.bag)} {args.wrench_topic}'
    if 'learned' in allocators and 'exact' in report['methods'] and not args.no_timing:
        learned = report['methods']['learned']['latency_b1']['median_us']
        exact = report['methods']['exact']['latency_b1']['median_us']
        report['learned_vs_exact_latency'] = learned / exact
    if args.model:
        report['model'] = str(args.model)
    write_report(report, report_path)
    plot_errors(report, curves, plot_path)
    print(format_table(report))
    if 'learned_vs_exact_latency' in report:
        print(f'learned latency at batch 1 is {report["learned_vs_exact_latency"]:.2f} x the '
              'exact solver\'s')
    print(f'wrote {report_path} and {plot_path}')
    return 0
