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
    already = len(_saved_model_dirs())
    try:
        return int(args.func(args) or 0)
    except EncdecError as err:
        rank, world = process_rank()
        if rank and getattr(err, 'all_ranks', False):
            return 2                     # under torchrun: rank 0 says it once for all
        where = f' (process {rank} of {world})' if world > 1 else ''
        print(f'encdec: error{where}: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'encdec: {_interrupted(args, _saved_model_dirs()[already:])}', file=sys.stderr)
        return 130
    except BrokenPipeError:              # `encdec inspect BAG | head`: the reader has left
        try:
            sys.stdout = open(os.devnull, 'w')
        except OSError:
            pass
        return 0


def process_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    try:
        return int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1'))
    except ValueError:
        return 0, 1


def _saved_model_dirs() -> list:
    """Model directories saved so far (none while modeldir, and numpy, are not imported)."""
    module = sys.modules.get('encdec_ros.modeldir')
    return module.saved_model_dirs() if module is not None else []


def _interrupted(args: argparse.Namespace, saved: Sequence[os.PathLike]) -> str:
    """What a Ctrl-C left behind, in one sentence: a model directory is written whole or not
    at all, so either it was saved (and loads) or nothing of it was written."""
    if saved:
        return (f'interrupted after the model directory {saved[-1]} was saved: model.onnx and '
                'model.yaml are complete and load; what came after them (loss.png, the '
                'summary) may be missing')
    if args.command == 'train':
        return 'interrupted before the model was saved; no model directory was written'
    return 'interrupted'


if __name__ == '__main__':
    sys.exit(main())
