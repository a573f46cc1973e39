"""The ``encdec`` command line: one entry point, one module per family of subcommands.

Each module named in :data:`COMMAND_MODULES` exposes ``register(groups)``, where ``groups``
maps a group name to an ``argparse`` subparsers object: ``'top'`` for top-level commands
(``encdec sim``), and ``'train'``, ``'eval'``, ``'bag'`` and ``'spec'`` for the grouped ones
(``encdec train anomaly``). A registered parser sets ``func=`` to a callable taking the parsed
arguments and returning an exit code. Modules keep heavy imports (torch, rclpy, onnxruntime)
inside those callables so that ``encdec --help`` is instant and the robot needs no torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from encdec_ros.errors import EncdecError

COMMAND_MODULES: tuple[str, ...] = ('sim', 'inspect', 'bag', 'spec', 'play', 'demo',
                                    'anomaly', 'allocator', 'denoise', 'bench')

GROUPS = {
    'train': 'train a model from bags and export it to ONNX (needs torch)',
    'eval': 'replay a bag or held-out data through a model and report figures',
    'bag': 'convert data into rosbag2',
    'spec': 'write a signal spec from a bag',
}


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``encdec`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog='encdec',
        description='Encoder-decoder networks on ROS 2 sensor streams: simulate, inspect, '
                    'train, evaluate and run.')
    parser.add_argument('-v', '--verbose', action='store_true', help='log debug messages')
    top = parser.add_subparsers(dest='command', metavar='COMMAND')
    groups: dict[str, argparse._SubParsersAction] = {'top': top}
    for name, help_text in GROUPS.items():
        group_parser = top.add_parser(name, help=help_text, description=help_text)
        groups[name] = group_parser.add_subparsers(dest=f'{name}_command', metavar='KIND')
        group_parser.set_defaults(func=_group_help(group_parser))
    for module in COMMAND_MODULES:
        importlib.import_module(f'{__name__}.{module}').register(groups)
    return parser


def _group_help(parser: argparse.ArgumentParser):
    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2
    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``encdec``; a user mistake prints one line and exits with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(message)s')
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EncdecError as err:
        print(f'encdec: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('encdec: interrupted', file=sys.stderr)
        return 130
    except BrokenPipeError:              # `encdec inspect BAG | head`: the reader has left
        try:
            sys.stdout = open(os.devnull, 'w')
        except OSError:
            pass
        return 0


if __name__ == '__main__':
    sys.exit(main())
