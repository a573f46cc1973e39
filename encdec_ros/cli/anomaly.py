"""``encdec train anomaly`` and ``encdec eval anomaly``."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

ARCH_CHOICES = ('mlp', 'lstm', 'gru')          # as training.models.ARCHS, without torch
ERROR_CHOICES = ('mse', 'channel_max', 'channel_max_flat', 'mahalanobis')


def register(groups: dict) -> None:
    """Add ``train anomaly`` and ``eval anomaly``."""
    t = groups['train'].add_parser(
        'anomaly', help='train an MLP / LSTM / GRU autoencoder on normal bags, export ONNX',
        description='Train an autoencoder on bags of normal operation, calibrate its threshold '
                    'on held-out normal data and write a model directory (model.onnx, '
                    'model.yaml, loss.png) for `encdec eval anomaly` and the anomaly_detector '
                    'node. Example: encdec train anomaly --bag out/normal --spec '
                    'config/sim_spec.yaml --arch lstm --out models/my_robot')
    t.add_argument('--bag', action='append', required=True, metavar='BAG',
                   help='bag of normal operation (repeatable)')
    t.add_argument('--spec', required=True, help='signal spec YAML (topics, fields, rate, window)')
    t.add_argument('--arch', choices=ARCH_CHOICES, default='lstm',
                   help='autoencoder (default: %(default)s)')
    t.add_argument('--out', required=True, help='model directory to write')
    t.add_argument('--force', action='store_true', help='replace an existing model directory')
    g = t.add_argument_group('model')
    g.add_argument('--hidden', type=int, default=32, help='hidden width / RNN state (32)')
    g.add_argument('--latent', type=int, default=8, help='bottleneck size (8)')
    g.add_argument('--layers', type=int, default=1, help='hidden layers / RNN layers (1)')
    g.add_argument('--dropout', type=float, default=0.0, help='dropout while training (0)')
    g.add_argument('--window', type=int, help="override the spec's window (samples)")
    g.add_argument('--stride', type=int, help="override the spec's stride (samples)")
    g = t.add_argument_group('training')
    g.add_argument('--epochs', type=int, default=40, help='most epochs (40)')
    g.add_argument('--patience', type=int, default=6,
                   help='early stopping: epochs without a better validation loss (6)')
    g.add_argument('--batch-size', type=int, default=64, help='windows per step (64)')
    g.add_argument('--lr', type=float, default=2e-3, help='Adam learning rate (2e-3)')
    g.add_argument('--weight-decay', type=float, default=0.0, help='Adam weight decay (0)')
    g.add_argument('--val-fraction', type=float, default=0.15,
                   help='share of each bag (by time, after the training part) for validation')
    g.add_argument('--calib-fraction', type=float, default=0.15,
                   help='share at the end of each bag for threshold calibration; 0 calibrates '
                        'on the validation part')
    g.add_argument('--folds', type=int,
                   help='cross-fitted calibration over this many folds of time blocks, so that '
                        'every normal window gets an error from a model that never saw it (0: '
                        'a plain hold-out split; default: cross-fit when the hold-out split '
                        'would leave fewer than 2000 held-out decisions)')
    g.add_argument('--train-stride', type=int,
                   help="samples between training windows (default: the spec's stride)")
    g.add_argument('--train-span', metavar='START:END',
                   help='use only this span of each bag, in seconds from its first sample '
                        '(e.g. :400)')
    g.add_argument('--keep-labelled', action='store_true',
                   help='also train on windows that overlap labelled intervals of the bag')
    g.add_argument('--seed', type=int, default=0, help='random seed (0)')
    g.add_argument('--time-limit', type=float, metavar='S',
                   help='stop training after S seconds (keeps the best epoch so far)')
    g.add_argument('--threads', type=int, help='torch CPU threads (default: torch decides)')
    g = t.add_argument_group('scoring and threshold')
    g.add_argument('--error', choices=ERROR_CHOICES, default='mahalanobis',
                   help='aggregate of per-channel errors: mse (mean over channels), '
                        'channel_max (the most unusual channel), channel_max_flat (that, or '
                        'a channel whose noise vanished, e.g. a stuck sensor) or mahalanobis '
                        '(the joint distance of all channels\' errors under their normal '
                        'covariance, or a channel gone flat; default)')
    g.add_argument('--slow', type=float, default=2.0, metavar='S',
                   help='seconds of slow context: each channel\'s error and roughness '
                        'averaged over the last S seconds of decisions, to catch small '
                        'persistent faults such as growing vibration (2; 0 turns it off)')
    g.add_argument('--threshold', choices=('pot', 'quantile'), default='pot',
                   help='calibration rule: pot (peaks over threshold, GPD tail; default) or '
                        'quantile')
    g.add_argument('--risk', type=float, default=1e-3,
                   help='chance that a normal window exceeds the threshold (1e-3)')
    g.add_argument('--quantile', type=float,
                   help='quantile for --threshold quantile (default 1 - risk)')
    g.add_argument('--init-quantile', type=float, default=0.98,
                   help="POT's initial level as a quantile of the errors (0.98)")
    g.add_argument('--threshold-scale', type=float, default=1.0,
                   help='multiply the calibrated threshold (1 = none)')
    g.add_argument('--margin', type=float, default=16.0,
                   help='raise the threshold by 1 + MARGIN / sqrt(n) for n held-out normal '
                        'decisions: the less normal data, the wider (16: x1.9 on 300 '
                        'decisions, x1.27 on 3,600; 0: none)')
    g.add_argument('--debounce-k', type=int, default=3,
                   help='windows above the threshold, of --debounce-n, that raise the flag (3)')
    g.add_argument('--debounce-n', type=int, default=5, help='windows remembered (5)')
    g.add_argument('--release', type=float, default=0.8,
                   help='hysteresis: the flag falls when debounce-n scores stay below this '
                        'fraction of the threshold (0.8)')
    g.add_argument('--drift', type=float, default=120.0, metavar='S',
                   help='follow slow drift of each channel\'s level (warm-up, wear) with this '
                        'time constant in seconds, holding channels that look unusual '
                        '(0: off; default %(default)s)')
    g.add_argument('--drift-freeze', type=float, default=0.5,
                   help='unusualness (fraction of the threshold) from which a channel\'s '
                        'drift is held (%(default)s)')
    g.add_argument('--drift-accept', type=float, default=600.0, metavar='S',
                   help='after this many seconds unusual, a held channel is followed again: a '
                        'lasting change becomes the new normal (0: never; default %(default)s)')
    t.set_defaults(func=_train)

    e = groups['eval'].add_parser(
        'anomaly', help='replay a bag through an anomaly model; F1, delays, JSON and PNG',
        description='Replay a bag through the same scorer as the anomaly_detector node and '
                    'compare its flags with the labelled faults: point-wise precision, recall, '
                    'F1 (pooled as in SKAB), false and missed alarm rates, detection delay per '
                    'labelled fault. Writes report.json and report.png.')
    e.add_argument('--model', required=True, help='model directory')
    e.add_argument('--bag', required=True, help='bag to replay')
    e.add_argument('--labels', help="labels CSV (default: the bag's labels.csv or label topic)")
    e.add_argument('--out', help='report directory (default: <bag>_eval beside the bag)')
    e.add_argument('--device', default='cpu', choices=('auto', 'tensorrt', 'cuda', 'cpu'),
                   help='inference device (default: %(default)s)')
    e.add_argument('--points', choices=('ticks', 'messages'), default='ticks',
                   help="what the point-wise figures count: aligned samples (ticks) or the "
                        "messages of the spec's first topic, e.g. CSV rows (messages)")
    e.add_argument('--eval-span', metavar='START:END',
                   help='count only points in this span, seconds from the first sample')
    e.add_argument('--grace', type=float, metavar='S',
                   help='seconds after a fault in which a flag still detects it and is no false '
                        'alarm (default: one window plus the release time)')
    e.add_argument('--debounce-k', type=int, help="override the model's debounce k")
    e.add_argument('--debounce-n', type=int, help="override the model's debounce n")
    e.add_argument('--release', type=float, help="override the model's release level")
    e.add_argument('--threshold-scale', type=float, default=1.0,
                   help='multiply the model threshold (default 1)')
    e.add_argument('--no-plot', action='store_true', help='skip the PNG')
    e.set_defaults(func=_eval)

    r = groups['top'].add_parser(
        'rebaseline', help='"this is normal now": refit an anomaly model\'s levels and '
                           'threshold on recent normal data (no torch)',
        description='Keep the trained network and refit what lives beside it on a bag of '
                    'recent normal operation after a lasting change of operating point (a '
                    'payload, a warm motor, a new speed): each channel\'s level (the offset '
                    'that zeroes the model\'s mean residual), its normal error statistics '
                    'and the threshold, never stricter than before. Writes a new model '
                    'directory (the same model.onnx) with a rebaseline section naming its '
                    'parent; the live node does the same on its ~/rebaseline service. '
                    'Example: encdec rebaseline --model models/my_robot --bag today '
                    '--last 300 --out models/my_robot_today')
    r.add_argument('--model', required=True, help='model directory to start from')
    r.add_argument('--bag', required=True, help='bag of recent normal operation')
    r.add_argument('--out', required=True, help='new model directory to write')
    r.add_argument('--last', type=float, metavar='S',
                   help='use only the last S seconds of the bag (default: all of it)')
    r.add_argument('--span', metavar='START:END',
                   help='use only this span, in seconds from the first sample')
    r.add_argument('--force', action='store_true', help='replace an existing directory')
    r.set_defaults(func=_rebaseline)


def _train(args: argparse.Namespace) -> int:
    from encdec_ros.io.spec import SignalSpec
    from encdec_ros.modeldir import check_output_dir

    # before torch is imported, any bag read or any epoch: an --out that cannot be written
    # and a spec that is no spec fail at once (the trainer reads the spec again)
    check_output_dir(args.out, what='model directory', empty=not args.force)
    SignalSpec.load(args.spec)

    from encdec_ros.anomaly.evaluate import parse_span
    from training.anomaly import TrainOptions, train_anomaly
    from training.models import AEConfig

    opts = TrainOptions(
        model=AEConfig(arch=args.arch, hidden=args.hidden, latent=args.latent,
                       layers=args.layers, dropout=args.dropout),
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        calib_fraction=args.calib_fraction, train_stride=args.train_stride, seed=args.seed,
        error=args.error, threshold_rule=args.threshold, risk=args.risk,
        quantile=args.quantile, init_quantile=args.init_quantile,
        threshold_scale=args.threshold_scale, margin=args.margin, slow_s=args.slow, debounce_k=args.debounce_k,
        debounce_n=args.debounce_n, release=args.release,
        train_span=parse_span(args.train_span), exclude_labelled=not args.keep_labelled,
        time_limit_s=args.time_limit, threads=args.threads, folds=args.folds,
        drift_s=args.drift, drift_freeze=args.drift_freeze, drift_accept_s=args.drift_accept)
    start = time.perf_counter()
    result = train_anomaly(args.bag, args.spec, args.out, opts, window=args.window,
                           stride=args.stride, command=_rebuild_command(args),
                           overwrite=args.force, say=print)
    print(f'wrote {result.path} (model.onnx, model.yaml, loss.png) in '
          f'{time.perf_counter() - start:.1f} s')
    return 0


def _rebuild_command(args: argparse.Namespace) -> str:
    """The command line that gives these arguments (for model.yaml)."""
    parts = ['encdec', 'train', 'anomaly']
    for bag in args.bag:
        parts += ['--bag', bag]
    parts += ['--spec', args.spec, '--arch', args.arch, '--out', args.out]
    for key in ('hidden', 'latent', 'layers', 'dropout', 'window', 'stride', 'epochs',
                'patience', 'batch_size', 'lr', 'weight_decay', 'val_fraction',
                'calib_fraction', 'train_stride', 'train_span', 'seed', 'time_limit', 'threads',
                'error', 'threshold', 'risk', 'quantile', 'init_quantile', 'threshold_scale',
                'debounce_k', 'debounce_n', 'release', 'folds', 'margin', 'drift', 'drift_freeze',
                'drift_accept'):
        value = getattr(args, key, None)
        if value is not None:
            parts += [f'--{key.replace("_", "-")}', str(value)]
    if getattr(args, 'keep_labelled', False):
        parts.append('--keep-labelled')
    return ' '.join(shlex.quote(p) for p in parts)


def _eval(args: argparse.Namespace) -> int:
    from encdec_ros.anomaly.evaluate import evaluate_bag, parse_span, summary_lines, write_report
    from encdec_ros.modeldir import check_output_dir

    bag = Path(args.bag)
    out = Path(args.out) if args.out else bag.with_name(f'{bag.name}_eval')
    check_output_dir(out, what='report directory')  # before the replay, not after it
    start = time.perf_counter()
    result = evaluate_bag(args.model, args.bag, labels_csv=args.labels, device=args.device,
                          points=args.points, eval_span=parse_span(args.eval_span),
                          grace_s=args.grace, debounce_k=args.debounce_k,
                          debounce_n=args.debounce_n, release=args.release,
                          threshold_scale=args.threshold_scale)
    json_path, png = write_report(result, out, model=args.model, plot=not args.no_plot)
    print(f'model {args.model} on {args.bag} ({result.scorer["provider"]}):')
    for line in summary_lines(result):
        print(f'  {line}')
    print(f'report: {json_path}' + (f'  plot: {png}' if png else '')
          + f'  ({time.perf_counter() - start:.1f} s)')
    return 0


def _rebaseline(args: argparse.Namespace) -> int:
    from encdec_ros.anomaly.evaluate import parse_span
    from encdec_ros.anomaly.rebaseline import rebaseline_bag
    from encdec_ros.errors import ModelDirError
    from encdec_ros.modeldir import check_output_dir

    check_output_dir(args.out, what='re-baselined model directory', empty=not args.force,
                     error=ModelDirError)
    result = rebaseline_bag(args.model, args.bag, args.out, last_s=args.last,
                            span=parse_span(args.span), overwrite=args.force)
    print(result.summary())
    return 0
