"""``encdec train anomaly`` and ``encdec eval anomaly``."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encdec_ros.io.spec import SignalSpec

ARCH_CHOICES = ('mlp', 'lstm', 'gru', 'conv', 'pca', 'robust_z')  # training.family.ARCHS
REG_CHOICES = ('none', 'vae', 'sparse', 'contractive')             # training.family.REGS
BAG_HELP = ('{what}: a rosbag2 directory, .db3/.mcap or ROS 1 .bag, a folder searched for '
            'bags, a quoted glob pattern or a .txt list of bags (repeatable)')


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options of how many bags reach training (training.data), shared by commands."""
    g = parser.add_argument_group('many bags (training.data)')
    g.add_argument('--cache', metavar='DIR',
                   help='folder of the cached aligned shards, one per bag and spec (default: '
                        '.encdec_shards beside --out); does not change the model')
    g.add_argument('--shuffle-shards', type=int, default=8, metavar='N',
                   help='bags whose windows are shuffled together each epoch, and held in '
                        'memory at a time by all processes together; with at most N bags the '
                        'batches are those of an in-memory run (8)')
    g.add_argument('--workers', type=int, metavar='N',
                   help='DataLoader workers reading bags in parallel, per process (default: '
                        'as many as its CPUs when reading several bags; 0: none); does not '
                        'change the model')
ERROR_CHOICES = ('mse', 'channel_max', 'channel_max_flat', 'mahalanobis')


def register(groups: dict) -> None:
    """Add ``train anomaly`` and ``eval anomaly``."""
    t = groups['train'].add_parser(
        'anomaly', help='train an autoencoder (or fit a PCA / robust z baseline) on normal '
                        'bags, export ONNX',
        description='Train an autoencoder on bags of normal operation, calibrate its threshold '
                    'on held-out normal data and write a model directory (model.onnx, '
                    'model.yaml, loss.png) for `encdec eval anomaly` and the anomaly_detector '
                    'node. Networks: mlp, lstm, gru, conv, each plain or with --reg vae, '
                    'sparse or contractive, and --noise for denoising training; baselines '
                    'fitted with numpy (no torch): pca (Hotelling T^2 + Q), robust_z. '
                    'Example: encdec train anomaly --bag out/normal --spec '
                    'config/sim_spec.yaml --arch lstm --out models/my_robot. Without --spec: '
                    '--topics /imu,/joint_states infers a spec from those topics of the first '
                    'bag (as encdec spec init does); with neither, BAG/spec.yaml is used where '
                    'there is one (encdec bag from-csv writes it), else every numeric topic. '
                    'Under torchrun (torchrun --nproc_per_node=N -m encdec_ros train anomaly '
                    '...) N processes train one model together (docs/fleet.md).')
    t.add_argument('--bag', action='append', required=True, metavar='BAG',
                   help=BAG_HELP.format(what='bag of normal operation'))
    t.add_argument('--spec', help='signal spec YAML (topics, fields, rate, window); default: '
                   'inferred, see --topics')
    t.add_argument('--topics', metavar='/A,/B',
                   help='infer the spec from these topics of the first bag: every numeric '
                        'field, rate and window from their rates (encdec spec init)')
    t.add_argument('--arch', choices=ARCH_CHOICES, default='lstm',
                   help='mlp, lstm, gru or conv autoencoder, or a baseline: pca (T^2 + Q) or '
                        'robust_z (default: %(default)s)')
    t.add_argument('--out', required=True, help='model directory to write')
    t.add_argument('--force', action='store_true', help='replace an existing model directory')
    g = t.add_argument_group('model')
    g.add_argument('--hidden', type=int, default=32,
                   help='hidden width / RNN state / conv feature maps (32)')
    g.add_argument('--latent', type=int,
                   help='code size; principal components for pca (8; pca 4)')
    g.add_argument('--layers', type=int,
                   help='hidden layers / RNN layers / conv strided stages (1; conv 2)')
    g.add_argument('--dropout', type=float, default=0.0, help='dropout while training (0)')
    g.add_argument('--kernel', type=int, help='conv: kernel size along time (5)')
    g.add_argument('--upsample', choices=('resize', 'transposed'),
                   help='conv decoder: resize (nearest upsampling + convolution; default) or '
                        'transposed convolutions (checkerboard artefacts, see docs)')
    g = t.add_argument_group('regulariser (networks)')
    g.add_argument('--reg', choices=REG_CHOICES, default='none',
                   help='vae: Gaussian encoder and decoder, scored by likelihood; sparse: L1 '
                        'or KL penalty on the code; contractive: penalty on the encoder\'s '
                        'Jacobian (default: %(default)s)')
    g.add_argument('--beta', type=float, help='vae: weight of the KL term (1)')
    g.add_argument('--kl-warmup', type=int, metavar='EPOCHS',
                   help='vae: epochs over which the KL weight rises from 0 to beta (5)')
    g.add_argument('--sparsity', choices=('l1', 'kl'),
                   help='sparse: l1 on the code or kl towards mean activation rho (l1)')
    g.add_argument('--sparsity-weight', type=float, help='sparse: penalty weight (0.01)')
    g.add_argument('--rho', type=float, help='sparse kl: target mean activation (0.05)')
    g.add_argument('--contractive-weight', type=float,
                   help='contractive: weight of the Jacobian penalty (0.001)')
    g.add_argument('--noise', metavar='SPEC',
                   help='denoising training: corrupt the inputs with this noise spec (as '
                        '`encdec train denoise --noise`, e.g. relative,gaussian:0.1) and '
                        'reconstruct the clean window')
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
                   help='use only this span of each bag: seconds from its first sample '
                        '(e.g. :400), or rows with a rows suffix (e.g. :400rows, the first 400 '
                        "messages of the spec's first topic: a CSV's rows)")
    g.add_argument('--keep-labelled', action='store_true',
                   help='also train on windows that overlap labelled intervals of the bag')
    g.add_argument('--seed', type=int, default=0, help='random seed (0)')
    g.add_argument('--time-limit', type=float, metavar='S',
                   help='stop training after S seconds (keeps the best epoch so far)')
    g.add_argument('--threads', type=int, help='torch CPU threads (default: torch decides)')
    add_data_options(t)
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
    e.add_argument('--bag', action='append', required=True,
                   help='bag to replay; or several (repeat, a folder, a quoted glob pattern or '
                        'a .txt list): one report each under --out and the pooled figures')
    e.add_argument('--labels', help="labels CSV (default: the bag's labels.csv or label topic)")
    e.add_argument('--out', help='report directory (default: <bag>_eval beside the bag)')
    e.add_argument('--device', default='cpu', choices=('auto', 'tensorrt', 'cuda', 'cpu'),
                   help='inference device (default: %(default)s)')
    e.add_argument('--points', choices=('ticks', 'messages'), default='ticks',
                   help="what the point-wise figures count: aligned samples (ticks) or the "
                        "messages of the spec's first topic, e.g. CSV rows (messages)")
    e.add_argument('--eval-span', metavar='START:END',
                   help='count only points in this span: seconds from the first sample, or '
                        'rows with a rows suffix (e.g. 400rows: skips the first 400 rows)')
    e.add_argument('--grace', type=float, metavar='S',
                   help='seconds after a fault in which a flag still detects it and is no false '
                        'alarm (default: one window plus the release time)')
    e.add_argument('--debounce-k', type=int, help="override the model's debounce k")
    e.add_argument('--debounce-n', type=int, help="override the model's debounce n")
    e.add_argument('--release', type=float, help="override the model's release level")
    e.add_argument('--threshold-scale', type=float, default=1.0,
                   help='multiply the model threshold (default 1)')
    e.add_argument('--no-plot', action='store_true', help='skip the PNG')
    e.add_argument('--latent-plot', metavar='FILE',
                   help='also draw the codes of the bag\'s windows (2-D PCA), coloured by '
                        'label, into this PNG (models with a code output)')
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
    from encdec_ros.modeldir import check_output_dir

    from encdec_ros.cli import process_rank
    from encdec_ros.io.bagset import expand_bags

    # before torch is imported, any bag read or any epoch: an --out that cannot be written,
    # a spec that is no spec and bags that are not there fail at once (the trainer reads the
    # spec again); under torchrun only rank 0 writes --out and prints
    main = process_rank()[0] == 0
    if main:
        check_output_dir(args.out, what='model directory', empty=not args.force)
    bags = expand_bags(args.bag)
    spec = training_spec(args, bags, say=print if main else lambda _line: None)

    from encdec_ros.anomaly.evaluate import parse_span
    from training.anomaly import TrainOptions, train_anomaly
    from training.family import AEConfig

    given = {key: getattr(args, name) for key, name in (
        ('latent', 'latent'), ('layers', 'layers'), ('kernel', 'kernel'),
        ('upsample', 'upsample'), ('beta', 'beta'), ('warmup', 'kl_warmup'),
        ('sparsity', 'sparsity'), ('sparsity_weight', 'sparsity_weight'), ('rho', 'rho'),
        ('contractive_weight', 'contractive_weight')) if getattr(args, name) is not None}
    opts = TrainOptions(
        model=AEConfig(arch=args.arch, hidden=args.hidden, dropout=args.dropout,
                       reg=args.reg, **given),
        noise=args.noise,
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        calib_fraction=args.calib_fraction, train_stride=args.train_stride, seed=args.seed,
        error=args.error, threshold_rule=args.threshold, risk=args.risk,
        quantile=args.quantile, init_quantile=args.init_quantile,
        threshold_scale=args.threshold_scale, margin=args.margin, slow_s=args.slow,
        debounce_k=args.debounce_k, debounce_n=args.debounce_n, release=args.release,
        train_span=parse_span(args.train_span), exclude_labelled=not args.keep_labelled,
        time_limit_s=args.time_limit, threads=args.threads, folds=args.folds,
        drift_s=args.drift, drift_freeze=args.drift_freeze, drift_accept_s=args.drift_accept,
        shuffle_shards=args.shuffle_shards, workers=args.workers, cache_dir=args.cache)
    start = time.perf_counter()
    result = train_anomaly(bags, spec, args.out, opts, window=args.window,
                           stride=args.stride, command=_rebuild_command(args),
                           overwrite=args.force, say=print)
    if main:
        files = 'model.onnx, model.yaml' + (', loss.png' if result.history else '')
        print(f'wrote {result.path} ({files}) in {time.perf_counter() - start:.1f} s')
    return 0


def training_spec(args: argparse.Namespace, bags: list[Path], *,
                  say: Any = print) -> 'SignalSpec':
    """The spec to train with: --spec, or inferred from --topics of the first bag, or the
    first bag's spec.yaml, or inferred from all its numeric topics; says which."""
    from encdec_ros.cli.spec import split_topics
    from encdec_ros.errors import SpecError
    from encdec_ros.io.spec import SignalSpec
    from encdec_ros.io.specinit import starter_spec

    if args.spec and args.topics:
        raise SpecError('give --spec or --topics, not both: --topics infers a spec from the '
                        'bag, --spec reads one')
    if args.spec:
        return SignalSpec.load(args.spec)
    bag = Path(bags[0])
    beside = bag / 'spec.yaml'
    if not args.topics and bag.is_dir() and beside.is_file():
        say(f'spec: {beside} (beside the bag; --spec or --topics to choose another)')
        args.spec = str(beside)
        return SignalSpec.load(beside)
    topics = split_topics(args.topics)
    starter = starter_spec(bag, topics=topics or None, name=bag.stem)
    how = 'the topics asked' if topics else 'every topic with a numeric field (no --spec)'
    say(f'spec: inferred from {how} of {bag} (encdec spec init {bag} writes it to a file '
        'to edit):')
    for line in starter.summary():
        say(f'  {line}')
    return starter.spec


def _rebuild_command(args: argparse.Namespace) -> str:
    """The command line that gives these arguments (for model.yaml)."""
    parts = ['encdec', 'train', 'anomaly']
    for bag in args.bag:
        parts += ['--bag', bag]
    if args.spec:
        parts += ['--spec', args.spec]
    elif args.topics:
        parts += ['--topics', args.topics]
    parts += ['--arch', args.arch, '--out', args.out]
    for key in ('hidden', 'latent', 'layers', 'dropout', 'kernel', 'upsample', 'reg', 'beta',
                'kl_warmup', 'sparsity', 'sparsity_weight', 'rho', 'contractive_weight',
                'noise', 'window', 'stride', 'epochs',
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
    from encdec_ros.errors import ModelDirError
    from encdec_ros.io.bagset import expand_bags
    from encdec_ros.modeldir import check_output_dir

    bags = expand_bags(args.bag)
    if len(bags) > 1:
        return _eval_set(args, bags)
    bag = Path(bags[0])
    out = Path(args.out) if args.out else bag.with_name(f'{bag.name}_eval')
    check_output_dir(out, what='report directory')  # before the replay, not after it
    if args.latent_plot:
        from encdec_ros.modeldir import ModelDir, check_output_file

        check_output_file(args.latent_plot, what='latent plot', option='--latent-plot')
        if not any(o.get('name') == 'code' for o in
                   ModelDir.load(args.model, task='anomaly', check_onnx=False).outputs):
            raise ModelDirError(f'{args.model} has no code output (it was trained before '
                                'models exported their codes); re-train it to plot its codes, '
                                'or drop --latent-plot')
    start = time.perf_counter()
    result = evaluate_bag(args.model, bag, labels_csv=args.labels, device=args.device,
                          points=args.points, eval_span=parse_span(args.eval_span),
                          grace_s=args.grace, debounce_k=args.debounce_k,
                          debounce_n=args.debounce_n, release=args.release,
                          threshold_scale=args.threshold_scale)
    json_path, png = write_report(result, out, model=args.model, plot=not args.no_plot)
    if args.latent_plot:
        from encdec_ros.anomaly.evaluate import plot_latent

        plot_latent(result, args.latent_plot)
        print(f'latent plot: {args.latent_plot}')
    print(f'model {args.model} on {bag} ({result.scorer["provider"]}):')
    for line in summary_lines(result):
        print(f'  {line}')
    print(f'report: {json_path}' + (f'  plot: {png}' if png else '')
          + f'  ({time.perf_counter() - start:.1f} s)')
    return 0


def _eval_set(args: argparse.Namespace, bags: list[Path]) -> int:
    """Evaluate on several bags: a report per bag under --out, pooled figures printed and in
    summary.json."""
    import json

    from encdec_ros.anomaly.evaluate import evaluate_bag, parse_span, pooled, write_report
    from encdec_ros.errors import ConfigError
    from encdec_ros.io.bagset import unique_names
    from encdec_ros.modeldir import check_output_dir

    if args.labels:
        raise ConfigError('--labels names one labels CSV, which fits one bag; with several '
                          'bags each uses its own labels.csv or label topic')
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / \
        f'{Path(args.model).name}_eval'
    check_output_dir(out, what='report directory')
    names = unique_names(bags)
    start = time.perf_counter()
    rows, results = [], []
    print(f'model {args.model} on {len(bags)} bags; reports in {out}')
    for bag, name in zip(bags, names):
        result = evaluate_bag(args.model, bag, device=args.device, points=args.points,
                              eval_span=parse_span(args.eval_span), grace_s=args.grace,
                              debounce_k=args.debounce_k, debounce_n=args.debounce_n,
                              release=args.release, threshold_scale=args.threshold_scale)
        write_report(result, out / name, model=args.model, plot=not args.no_plot)
        m = result.metrics
        events = m['events']
        times = result.times_ns
        row = {'bag': str(bag), 'report': str(out / name), 'pointwise': m['pointwise'],
               'events': len(events), 'detected': sum(e['detected'] for e in events),
               'false_alarms': m['alarms']['false_alarms'],
               'hours': (int(times[-1]) - int(times[0])) * 1e-9 / 3600 if times.size else 0.0}
        rows.append(row)
        results.append(result)
        f1 = m['pointwise']['f1']
        print(f'  {name:<28} F1 {"n/a" if f1 is None else f"{f1:.3f}"}  faults '
              f'{row["detected"]}/{row["events"]} detected  false alarms '
              f'{row["false_alarms"]}')
    pool = pooled(results)
    hours = sum(r['hours'] for r in rows)
    false_alarms = sum(r['false_alarms'] for r in rows)
    summary = {'model': str(args.model), 'bags': rows, 'pooled': pool,
               'events': sum(r['events'] for r in rows),
               'detected': sum(r['detected'] for r in rows),
               'false_alarms': false_alarms,
               'false_alarms_per_hour': false_alarms / hours if hours else None}
    (out / 'summary.json').write_text(json.dumps(summary, indent=1, default=float))

    def fmt(v: float | None, pct: bool = False) -> str:
        return 'n/a' if v is None else (f'{100 * v:.2f} %' if pct else f'{v:.3f}')

    print(f'pooled over {len(bags)} bags ({hours:.2f} h): precision {fmt(pool["precision"])}  '
          f'recall {fmt(pool["recall"])}  F1 {fmt(pool["f1"])}  FAR {fmt(pool["far"], True)}; '
          f'faults {summary["detected"]}/{summary["events"]} detected; {false_alarms} false '
          'alarm(s)' + (f' ({summary["false_alarms_per_hour"]:.1f} per hour)' if hours else ''))
    print(f'summary: {out / "summary.json"}  ({time.perf_counter() - start:.1f} s)')


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
