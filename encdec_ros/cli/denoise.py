"""``encdec train denoise`` and ``encdec eval denoise``: the causal denoising autoencoder."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any, Sequence

from encdec_ros.cli.anomaly import BAG_HELP

METHOD_CHOICES = ('model', 'butterworth', 'one_euro', 'kalman')
NOISE_HELP = ('corruption: a string such as gaussian:0.05,spikes:0.01:2.0,quant:0.01,'
              'bias_walk:1e-4,drop:0.02 (prefix relative, to scale by each channel\'s std) or '
              'a YAML file')


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``train denoise`` and ``eval denoise``."""
    t = groups['train'].add_parser(
        'denoise', help='train a causal denoising autoencoder for one topic',
        description='Train a denoising autoencoder (MLP or GRU) that sees the last N messages '
                    'of one topic and estimates the clean current one. Clean targets come from '
                    'a ground-truth topic (<topic>/clean, e.g. the synthetic robot\'s '
                    '/imu/clean) or from the recorded signal itself with --noise added to the '
                    'input. Also tunes the Butterworth, 1-Euro and Kalman baselines on the '
                    'validation data, exports ONNX (parity-checked) and writes a model '
                    'directory.')
    t.add_argument('--bag', action='append', required=True, metavar='BAG',
                   help=BAG_HELP.format(what='training bag'))
    t.add_argument('--spec', required=True,
                   help='signal spec YAML with ONE topic; rate_hz is its own rate, window N')
    t.add_argument('--out', required=True, help='model directory to write')
    t.add_argument('--arch', choices=('mlp', 'gru'), default='mlp',
                   help='network (default: %(default)s)')
    t.add_argument('--noise', metavar='SPEC', help=NOISE_HELP + '; required without a clean '
                   'topic, optional augmentation with one')
    t.add_argument('--also-uncorrupted', action='store_true',
                   help='with --noise and a clean topic: train on each bag both with and '
                        'without that corruption (a sensor that glitches only some of the '
                        'time)')
    t.add_argument('--clean-topic', default='auto', metavar='TOPIC',
                   help='ground-truth topic with the same stamps; auto: <topic>/clean when the '
                        'bag has it; none: the recorded signal (default: %(default)s)')
    t.add_argument('--force', action='store_true', help='replace an existing model directory')
    g = t.add_argument_group('model')
    g.add_argument('--window', type=int, help="override the spec's window (samples)")
    g.add_argument('--hidden', type=int,
                   help='hidden units per MLP layer (128) or GRU state size (64)')
    g.add_argument('--layers', type=int, help='MLP hidden layers (2) or GRU layers (1)')
    g.add_argument('--learn-offset', action='store_true',
                   help='also learn the constant noisy-minus-clean offset of the training '
                        'bags (a fixed bias that repeats in every recording; off: treat it as '
                        'a turn-on bias that changes at every power-up)')
    g.add_argument('--absolute-input', action='store_true',
                   help='also give the network the level of the samples, not only their '
                        'shape relative to the current one (off: generalises better to other '
                        'operating points)')
    g = t.add_argument_group('training')
    g.add_argument('--epochs', type=int, default=30, help='most epochs (30)')
    g.add_argument('--patience', type=int, default=6,
                   help='stop after this many epochs without a better validation loss (6)')
    g.add_argument('--batch-size', type=int, default=256, help='windows per step (256)')
    g.add_argument('--lr', type=float, default=2e-3, help='peak learning rate (2e-3)')
    g.add_argument('--weight-decay', type=float, default=1e-4, help='AdamW weight decay (1e-4)')
    g.add_argument('--val-fraction', type=float, default=0.2,
                   help='share of each bag, at its end, for validation and tuning (0.2)')
    g.add_argument('--max-windows', type=int, metavar='N',
                   help='windows drawn per epoch at most (default: all)')
    g.add_argument('--train-span', metavar='START:END',
                   help='use only this part of each bag, seconds from its start, e.g. :300')
    g.add_argument('--seed', type=int, default=0, help='random seed (0)')
    g.add_argument('--time-limit', type=float, metavar='S',
                   help='stop training after S seconds (keeps the best epoch)')
    g.add_argument('--threads', type=int, help='torch CPU threads (default: torch decides)')
    t.set_defaults(func=_train)

    e = groups['eval'].add_parser(
        'denoise', help='RMSE and lag of a denoise model and the classical filters on a bag',
        description='Replay one topic of a bag through the model and the Butterworth, 1-Euro '
                    'and Kalman baselines (the same streaming core as the denoiser node) and '
                    'report, per channel, RMSE against the clean signal and lag (the delay '
                    'maximising the cross-correlation with it), a JSON report and a PNG.')
    e.add_argument('--model', required=True, help='denoise model directory')
    e.add_argument('--bag', action='append', required=True,
                   help='bag to evaluate on; or several (repeat, a folder, a quoted glob '
                        'pattern or a .txt list): one report each under --out, and the pooled '
                        'RMSE')
    ref = e.add_mutually_exclusive_group()
    ref.add_argument('--clean-topic', metavar='TOPIC',
                     help='ground-truth topic (default: <topic>/clean when the bag has it)')
    ref.add_argument('--add-noise', metavar='SPEC',
                     help=NOISE_HELP + '; added to the recorded signal, which serves as clean')
    e.add_argument('--seed', type=int, default=0, help='seed of --add-noise (0)')
    e.add_argument('--eval-span', metavar='START:END',
                   help='use only this part of the bag, seconds from its start, e.g. 300:')
    e.add_argument('--methods', default=','.join(METHOD_CHOICES),
                   help='comma-separated methods to run (default: all)')
    e.add_argument('--device', default='cpu', choices=('auto', 'tensorrt', 'cuda', 'cpu'),
                   help='inference device for the model (default: %(default)s)')
    e.add_argument('--out', help='report directory (default: <bag>_denoise beside the bag, or '
                                 'in the current directory when that is read-only)')
    e.add_argument('--segment', type=float, default=2.0, metavar='S',
                   help='length of the zoomed segment in the PNG (2 s)')
    e.add_argument('--no-plot', action='store_true', help='skip the PNG')
    e.set_defaults(func=_eval)


def _command() -> str:
    return 'encdec ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])


def _train(args: argparse.Namespace) -> int:
    from encdec_ros.cli import process_rank
    from encdec_ros.io.bagset import expand_bags
    from encdec_ros.io.spec import SignalSpec
    from encdec_ros.modeldir import check_output_dir

    # before torch is imported, any bag read or any epoch: an --out that cannot be written,
    # a spec that is no spec and bags that are not there fail at once (the trainer reads the
    # spec again); under torchrun only rank 0 writes --out
    if process_rank()[0] == 0:
        check_output_dir(args.out, what='model directory', empty=not args.force)
    SignalSpec.load(args.spec)
    bags = expand_bags(args.bag)

    from encdec_ros.denoise.evaluate import parse_span
    from encdec_ros.denoise.noise import parse_noise
    from training.denoise import DenoiseOptions, train_denoiser

    clean = None if args.clean_topic.lower() == 'none' else args.clean_topic
    options = DenoiseOptions(
        arch=args.arch, window=args.window, hidden=args.hidden, layers=args.layers,
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        max_windows=args.max_windows, noise=parse_noise(args.noise),
        also_uncorrupted=args.also_uncorrupted, clean_topic=clean,
        learn_offset=args.learn_offset, absolute_input=args.absolute_input,
        train_span=parse_span(args.train_span),
        seed=args.seed, threads=args.threads, time_limit_s=args.time_limit)
    result = train_denoiser(bags, args.spec, args.out, options=options, force=args.force,
                            command=_command())
    if process_rank()[0] != 0:
        return 0
    fig = result.figures
    tr = fig['training']
    print(f'wrote {result.path} ({args.arch}, window {fig["window"]}): '
          f'{tr["samples"]["train"]} training and {tr["samples"]["validation"]} validation '
          f'samples; reference: {"; ".join(fig["reference"])}')
    print(f'  {tr["epochs_run"]} epochs (best {tr["best_epoch"]}, stopped by '
          f'{tr["stopped_by"]}) in {tr["train_seconds"]:.1f} s; validation loss '
          f'{tr["val_loss"]:.4f} (linear part alone {tr["val_loss_linear_only"]:.4f}); ONNX '
          f'parity {tr["export"]["max_abs_diff"]:.2g}')
    val = fig['validation']
    print('  validation RMSE per channel (baselines tuned on the same data):')
    _table(fig['channels'], val['rmse'], None)
    ratio = val['ratio_model_to_best_baseline']
    print('  model / best baseline: ' + ', '.join(f'{r:.3f}' for r in ratio))
    print(f'  loss curve: {result.path / "loss.png"}')
    return 0


def _table(channels: Sequence[str], rmse: dict[str, Sequence[float]],
           lags: dict[str, Sequence[float]] | None) -> None:
    names = [c.rsplit('/', 1)[-1] for c in channels]
    width = max(12, *(len(n) for n in names))
    methods = list(rmse)
    head = ''.join(f'{m:>22}' if lags else f'{m:>13}' for m in methods)
    print(f'    {"channel":<{width}}{head}')
    for c, name in enumerate(names):
        cells = []
        for m in methods:
            if lags:
                cells.append(f'{rmse[m][c]:>11.4g} ({lags[m][c]:>6.1f} ms)')
            else:
                cells.append(f'{rmse[m][c]:>13.4g}')
        print(f'    {name:<{width}}' + ''.join(cells))


def _fmt(value: float | None) -> str:
    """A figure with three decimals, or n/a where it is undefined."""
    return 'n/a' if value is None else f'{value:.3f}'


def _eval(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from encdec_ros.denoise.evaluate import evaluate_denoise, parse_span
    from encdec_ros.denoise.noise import parse_noise
    from encdec_ros.errors import ConfigError

    from encdec_ros.io.bagset import expand_bags

    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    bad = [m for m in methods if m not in METHOD_CHOICES]
    if bad or not methods:
        raise ConfigError(f'--methods takes a comma-separated list of '
                          f'{", ".join(METHOD_CHOICES)}, got {args.methods!r}')
    noise = parse_noise(args.add_noise)
    clean: Any = args.clean_topic or ('auto' if noise is None else None)
    bags = expand_bags(args.bag)
    if len(bags) > 1:
        return _eval_set(args, bags, methods=methods, noise=noise, clean=clean)
    bag = Path(bags[0])
    if args.out:
        out = Path(args.out)
    else:
        out = bag.with_name(f'{bag.stem if bag.is_file() else bag.name}_denoise')
        if not os.access(out.parent, os.W_OK):
            out = Path.cwd() / out.name
    report = evaluate_denoise(args.model, bag, clean_topic=clean, add_noise=noise,
                              seed=args.seed, span=parse_span(args.eval_span), methods=methods,
                              device=args.device, out_dir=out, plot=not args.no_plot,
                              segment_s=args.segment)
    figs = report['methods']
    print(f'{report["topic"]} ({report["type"]}): {report["samples"]} messages at '
          f'{report["rate_hz"]:g} Hz (measured {report["measured_rate_hz"]:g}); reference: '
          f'{report["reference"]}; first {report["skipped"]} left out as warm-up')
    print('  RMSE against the clean signal per channel (lag):')
    _table(report['channels'], {m: f['rmse'] for m, f in figs.items()},
           {m: f['lag_ms'] for m, f in figs.items()})
    print('    overall (RMSE / noisy RMSE, RMS over channels): ' + ', '.join(
        f'{m} {_fmt(f["rmse_overall"])}' for m, f in figs.items()))
    comp = report['comparison']
    if comp:
        print(f'  model / best baseline ({comp["best_baseline"]}): overall '
              f'{comp["ratio_overall"]:.3f}; per channel '
              + ', '.join(map(_fmt, comp['ratio_per_channel'])))
        print('  model / best baseline of each channel: '
              + ', '.join(map(_fmt, comp['ratio_per_channel_vs_each_best'])))
        print(f'  model lag no larger than {comp["best_baseline"]}\'s: '
              f'{"yes" if comp["lag_no_larger"] else "no"}')
    print(f'  report: {report.get("report")}' + (f', plot: {report["png"]}'
                                                 if report.get('png') else ''))
    return 0


def _eval_set(args: argparse.Namespace, bags: list, *, methods: list[str], noise: Any,
              clean: Any) -> int:
    """Evaluate on several bags: a report per bag under --out, pooled RMSE printed and in
    summary.json (each bag weighted by its samples)."""
    import json
    from pathlib import Path

    from encdec_ros.denoise.evaluate import evaluate_denoise, parse_span
    from encdec_ros.io.bagset import unique_names
    from encdec_ros.modeldir import check_output_dir

    out = Path(args.out) if args.out else Path(args.model).resolve().parent / \
        f'{Path(args.model).name}_denoise'
    check_output_dir(out, what='report directory')
    import numpy as np

    sums: dict[str, np.ndarray] = {}
    total = 0
    rows = []
    print(f'model {args.model} on {len(bags)} bags; reports in {out}')
    for i, (bag, name) in enumerate(zip(bags, unique_names(bags))):
        report = evaluate_denoise(args.model, bag, clean_topic=clean, add_noise=noise,
                                  seed=args.seed + i, span=parse_span(args.eval_span),
                                  methods=methods, device=args.device, out_dir=out / name,
                                  plot=not args.no_plot, segment_s=args.segment)
        n = int(report['samples']) - int(report['skipped'])
        figs = report['methods']
        for m, f in figs.items():
            sums[m] = sums.get(m, 0.0) + n * np.square(np.asarray(f['rmse'], dtype=float))
        total += n
        rows.append({'bag': str(bag), 'report': str(out / name), 'samples': n,
                     'rmse': {m: f['rmse'] for m, f in figs.items()}})
        print(f'  {name:<28} ' + ', '.join(f'{m} {_fmt(f["rmse_overall"])}'
                                          for m, f in figs.items()))
    # pooled per channel (each bag weighted by its samples), then as each report's overall
    # figure: RMSE over the noisy input's per channel, RMS over the channels
    rmse = {m: np.sqrt(v / max(total, 1)) for m, v in sums.items()}
    noisy = rmse['noisy'] > 0
    overall = {m: float(np.sqrt(np.mean((v[noisy] / rmse['noisy'][noisy]) ** 2)))
               if noisy.any() else None for m, v in rmse.items()}
    (out / 'summary.json').write_text(json.dumps(
        {'model': str(args.model), 'bags': rows, 'samples': total,
         'pooled_rmse': {m: v.tolist() for m, v in rmse.items()},
         'pooled_rmse_overall': overall}, indent=1))
    print(f'pooled over {len(bags)} bags (RMSE / noisy RMSE, RMS over channels): '
          + ', '.join(f'{m} {_fmt(v)}' for m, v in overall.items()))
    print(f'summary: {out / "summary.json"}')
    return 0
