"""The autoencoder family side by side: every architecture x regulariser and the classical
baselines, on the synthetic robot's held-out fault flights and on SKAB, in one run.

What runs is what the CLI runs: every model is trained by ``encdec train anomaly``'s code
(training.anomaly.train_anomaly) with the CLI's defaults except the family options named in
its row (the table prints the CLI flags), and evaluated by ``encdec eval anomaly``'s code (the
same scorer as the live node).

Choosing the regularisers' settings (cross-validation across experiment groups):

- each regulariser's setting (VAE beta, sparse penalty, contractive weight, denoising
  corruption, PCA components) is chosen from a small grid on the MLP (the cheapest network)
  by the pooled ROC-AUC of the streaming score on ONE SKAB group (valve1, valve2 or other),
  and that choice is reported on the two other groups, for every architecture; the three
  rotations are pooled. The AUC is threshold-free, so the choice does not depend on the
  calibration rule (which issue 10 owns); the flags are then the CLI's (its threshold rule);
- the CLI default is the setting chosen on all three groups together; the synthetic robot,
  never used for a choice, runs every architecture with those defaults: independent evidence;
- the default architecture: the config with the best rotated SKAB AUC (chosen on two groups,
  reported on the third) and its sim figures are printed, with the choice on half of the sim
  fault flights reported on the other half.

Figures per row: parameters, training seconds, ONNX latency at batch 1 (p50, and as a ratio
to the robust z graph, the floor, in the same run), ONNX-vs-torch parity (numpy for the
baselines); sim: fault kinds detected (of 6), events detected, mean delay, FAR outside the
grace, false alarms per hour; SKAB (rotated): pooled point-wise F1 / FAR / MAR and AUC, with
the F1 of flagging every point beside it.

Usage::

    nice -n 10 python benchmarks/bench_family.py --json out/bench_family.json
    nice -n 10 python benchmarks/bench_family.py --quick          # a reduced table, minutes

Work (bags, models, per-file results) is cached under --work; a second run only prints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ('stuck', 'bias_drift', 'spikes', 'vibration', 'motor_degradation', 'motor_failure')
FIT_ROWS = 400            # SKAB protocol: fit on the first 400 rows of each file
GROUPS = ('valve1', 'valve2', 'other')


@dataclass(frozen=True)
class Config:
    """One row: family options (AEConfig fields and 'noise') on top of the CLI defaults."""

    name: str
    options: tuple[tuple[str, Any], ...]
    family: str = ''          # the grid this row belongs to ('' for a fixed row)

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def tag(self) -> str:
        return '_'.join(f'{k}-{v}' for k, v in self.options).replace(',', '+').replace(
            ':', '=').replace('/', '')

    @property
    def cli(self) -> str:
        """The flags of ``encdec train anomaly`` for this row."""
        names = {'warmup': 'kl-warmup'}
        parts = []
        for key, value in self.options:
            parts += [f'--{names.get(key, key.replace("_", "-"))}', str(value)]
        return ' '.join(shlex.quote(p) for p in parts)


def C(name: str, family: str = '', **opts: Any) -> Config:
    return Config(name, tuple(opts.items()), family)


# Each regulariser's grid, tried on the MLP and chosen by rotated CV on SKAB.
GRIDS: dict[str, list[dict[str, Any]]] = {
    'vae': [{'reg': 'vae', 'beta': 0.1}, {'reg': 'vae', 'beta': 1.0}],
    'sparse': [{'reg': 'sparse', 'sparsity': 'l1', 'sparsity_weight': 1e-3},
               {'reg': 'sparse', 'sparsity': 'l1', 'sparsity_weight': 1e-2},
               {'reg': 'sparse', 'sparsity': 'kl', 'sparsity_weight': 1e-2}],
    'contractive': [{'reg': 'contractive', 'contractive_weight': 1e-4},
                    {'reg': 'contractive', 'contractive_weight': 1e-3},
                    {'reg': 'contractive', 'contractive_weight': 1e-2}],
    'denoise': [{'noise': 'relative,gaussian:0.1'}, {'noise': 'relative,gaussian:0.3'},
                {'noise': 'relative,gaussian:0.1,spikes:0.01:3'}],
}
PCA_GRID = [{'latent': 4}, {'latent': 8}, {'latent': 16}]
NETWORKS = ('mlp', 'lstm', 'gru', 'conv')


def grid_name(family: str, opts: dict[str, Any]) -> str:
    """A short row name for a grid point."""
    if family == 'vae':
        return f'vae b={opts["beta"]:g}'
    if family == 'sparse':
        return f'sparse {opts["sparsity"]} {opts["sparsity_weight"]:g}'
    if family == 'contractive':
        return f'contractive {opts["contractive_weight"]:g}'
    if family == 'denoise':
        short = opts['noise'].replace('relative,', '').replace('gaussian:', 'g')
        return 'denoise ' + short.replace('spikes:', 's')
    return f'pca k={opts["latent"]}'


# --------------------------------------------------------------------------- helpers


def auc(scores: Any, labels: Any) -> float | None:
    """ROC-AUC of scores against boolean labels (ties share ranks; NaN scores rank lowest)."""
    import numpy as np
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    s = np.where(np.isfinite(s), s, -np.inf)
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from encdec_ros.anomaly.evaluate import pooled

    return pooled([{'pointwise': r['pointwise']} for r in rows])


def latency_ms(model: Path, runs: int = 300) -> float:
    """p50 of ONNX Runtime calls at batch 1 on the CPU (one thread), all outputs."""
    import numpy as np

    from encdec_ros.engine import InferenceEngine

    engine = InferenceEngine(model / 'model.onnx', device='cpu', threads=1, warmup=20)
    shape = tuple(1 if d is None else d for d in engine.input_shapes[0])
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for _ in range(runs):
        engine.run_many({engine.input_names[0]: x})
    return engine.latency_ms()['p50']


def model_figures(model: Path) -> dict[str, Any]:
    import yaml

    meta = yaml.safe_load((model / 'model.yaml').read_text())
    t = meta['training']
    return {'parameters': meta['architecture']['parameters'],
            'train_s': t['seconds']['train'], 'epochs': t['epochs_run'],
            'parity': t['export']['max_abs_diff'], 'threshold': meta['threshold']}


def defaults_key() -> str:
    """A short hash of the CLI's training defaults: cached results are kept per defaults, so
    a run after the defaults changed trains again instead of mixing old and new figures."""
    import dataclasses
    import hashlib

    from training.anomaly import TrainOptions

    text = json.dumps(dataclasses.asdict(TrainOptions()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def cached(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def train(bags: list[Path], spec: Any, out: Path, cfg: Config, args: argparse.Namespace,
          **train_kw: Any) -> Path:
    """``encdec train anomaly`` with the CLI defaults and the row's family options."""
    from training.anomaly import TrainOptions, train_anomaly
    from training.family import AEConfig

    if (out / 'model.yaml').exists():
        return out
    opts = dict(cfg.opts)
    noise = opts.pop('noise', None)
    options = TrainOptions(model=AEConfig(**opts), noise=noise, threads=1,
                           time_limit_s=args.time_limit, **train_kw)
    if args.epochs:
        options.epochs = args.epochs
    train_anomaly(bags, spec, out, options, overwrite=True, say=lambda s: None,
                  show_progress=False)
    return out


# --------------------------------------------------------------------------- SKAB


def skab_file(csv: Path, cfg: Config, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train on the first 400 rows of one SKAB file, score the rest (cached)."""
    def make() -> dict[str, Any]:
        import numpy as np

        from encdec_ros.anomaly.evaluate import evaluate_recording, held_values
        from encdec_ros.anomaly.scorer import AnomalyScorer
        from encdec_ros.io.bag import read_bag
        from encdec_ros.io.csvbag import csv_to_bag
        from encdec_ros.io.spec import SignalSpec

        name = f'{csv.parent.name}_{csv.stem}'
        bag = work.parent / 'skab_bags' / name
        if not (bag / 'metadata.yaml').exists():
            csv_to_bag(csv, bag, sep=';', time_col='datetime', label_col='anomaly',
                       exclude=['changepoint'], overwrite=True)
        spec = SignalSpec.load(bag / 'spec.yaml')
        rec = read_bag(bag, spec)
        stamps = rec.streams[spec.topic_names[0]].stamps_ns
        fit_end_s = (int(stamps[FIT_ROWS]) - int(rec.times_ns[0])) * 1e-9
        model = work / 'skab_models' / cfg.tag / name
        t0 = time.perf_counter()
        train([bag], spec, model, cfg, args, train_span=(None, fit_end_s),
              exclude_labelled=False)
        wall = time.perf_counter() - t0
        scorer = AnomalyScorer(model, device='cpu')
        res = evaluate_recording(scorer, rec, points='messages', eval_span=(fit_end_s, None))
        dec_t = res.decision_times_ns
        scores = held_values(dec_t, res.scores, res.point_times_ns, fill=np.nan)
        out = {'file': name, 'group': csv.parent.name, 'pointwise': res.metrics['pointwise'],
               'scores': [None if not np.isfinite(v) else float(v) for v in scores],
               'labels': [bool(v) for v in res.point_labels], 'wall_s': wall,
               **model_figures(model)}
        return out

    return cached(work / 'skab_results' / cfg.tag / f'{csv.parent.name}_{csv.stem}.json', make)


def skab_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    if not rows:
        return {}
    total = pool(rows)
    scores = np.concatenate([np.array(r['scores'], dtype=np.float64) for r in rows])
    labels = np.concatenate([np.array(r['labels'], dtype=bool) for r in rows])
    return {'f1': total['f1'], 'far': total['far'], 'mar': total['mar'],
            'auc': auc(scores, labels), 'flag_all_f1': total['flag_everything_f1'],
            'files': len(rows)}


# --------------------------------------------------------------------------- the sim


def sim_flight(work: Path, name: str, seed: int, duration: float, faults: str) -> Path:
    from training.sim import SimConfig, simulate, write_bag

    path = work.parent / 'bags' / name
    if not (path / 'metadata.yaml').exists():
        write_bag(simulate(SimConfig(duration_s=duration, seed=seed, faults=faults)), path)
    return path


def sim_run(cfg: Config, work: Path, train_bags: list[Path], test_bags: list[Path],
            args: argparse.Namespace) -> dict[str, Any]:
    """Train on the normal flights, evaluate on each fault flight (cached per flight)."""
    from encdec_ros.anomaly.evaluate import evaluate_bag
    from encdec_ros.anomaly.scorer import AnomalyScorer

    model = work / 'sim_models' / cfg.tag
    t0 = time.perf_counter()
    train(train_bags, ROOT / 'config' / 'sim_spec.yaml', model, cfg, args)
    wall = time.perf_counter() - t0
    flights = []
    scorer = None
    for bag in test_bags:
        def make(bag: Path = bag) -> dict[str, Any]:
            nonlocal scorer
            scorer = scorer or AnomalyScorer(model, device='cpu')
            scorer.reset()
            res = evaluate_bag(scorer, bag)
            m = res.metrics
            return {'flight': bag.name, 'events': [
                        {k: e[k] for k in ('kind', 'detail', 'detected', 'delay_s')}
                        for e in m['events']],
                    'pointwise': m['pointwise'], 'after_grace': m['pointwise_after_grace'],
                    'false_alarms': m['alarms']['false_alarms'],
                    'hours': m['alarms'].get('normal_hours',
                                             float(res.times_ns[-1] - res.times_ns[0])
                                             * 1e-9 / 3600),
                    'grace_s': m['grace_s']}
        flights.append(cached(work / 'sim_results' / cfg.tag / f'{bag.name}.json', make))
    return {'flights': flights, 'wall_s': wall, **model_figures(model),
            'latency_ms': latency_ms(model)}


def sim_figures(flights: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    from encdec_ros.anomaly.evaluate import pooled

    events = [e for f in flights for e in f['events']]
    per_kind = {k: [e for e in events if e['kind'] == k] for k in KINDS}
    hit = [e for e in events if e['detected']]
    outside = pooled([{'pointwise': f['after_grace']} for f in flights])
    hours = sum(f['hours'] for f in flights)
    return {'kinds_detected': sum(1 for v in per_kind.values()
                                  if v and all(e['detected'] for e in v)),
            'kinds_any': sum(1 for v in per_kind.values() if any(e['detected'] for e in v)),
            'events_detected': len(hit), 'events': len(events),
            'per_kind': {k: f'{sum(e["detected"] for e in v)}/{len(v)}'
                         for k, v in per_kind.items()},
            'mean_delay_s': float(np.mean([e['delay_s'] for e in hit])) if hit else None,
            'far_after_grace': outside['far'],
            'false_alarms': sum(f['false_alarms'] for f in flights),
            'false_alarms_per_hour': sum(f['false_alarms'] for f in flights) / hours
            if hours else None,
            'f1': pooled([{'pointwise': f['pointwise']} for f in flights])['f1']}


def sim_score(fig: dict[str, Any]) -> tuple:
    """Order of merit on the sim: faults detected less false alarms (a false alarm costs as
    much as a missed fault), then the shorter mean delay."""
    return (fig['events_detected'] - fig['false_alarms'], -(fig['mean_delay_s'] or 99.0))


# --------------------------------------------------------------------------- main


@dataclass
class Row:
    cfg: Config
    skab: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=str(ROOT.parent / 'shared' / 'data' / 'skab'))
    p.add_argument('--work', default=str(ROOT / 'out' / 'bench_family'))
    p.add_argument('--train-seeds', default='21,22')
    p.add_argument('--train-duration', type=float, default=300.0)
    p.add_argument('--test-seeds', default='2,3,4,5,6,7')
    p.add_argument('--test-duration', type=float, default=180.0)
    p.add_argument('--epochs', type=int, help='override the CLI default (a reduced run)')
    p.add_argument('--time-limit', type=float, default=300.0,
                   help='seconds per training (encdec train anomaly --time-limit; 300)')
    p.add_argument('--quick', action='store_true',
                   help='reduced: 8 epochs, one sim training flight, 3 fault flights, fewer '
                        'SKAB files per group')
    p.add_argument('--no-sim', action='store_true')
    p.add_argument('--no-skab', action='store_true')
    p.add_argument('--json', help='write the figures here')
    args = p.parse_args()
    if args.quick:
        args.epochs = args.epochs or 8
        args.train_seeds = '21'
        args.test_seeds = '2,3,4'

    import logging
    logging.disable(logging.WARNING)
    import numpy as np

    work = Path(args.work)
    bags_dir = work
    work = work / f'defaults_{defaults_key()}'
    data = Path(args.data)
    files = sorted(f for f in data.glob('*/*.csv') if f.parent.name in GROUPS)
    if args.quick:
        files = [f for g in GROUPS for f in [x for x in files if x.parent.name == g][:2]]
    if not args.no_skab and not files:
        print(f'no SKAB files under {data}; pass --data or --no-skab')
        return 1
    started = time.perf_counter()
    log = lambda text: print(f'[{time.perf_counter() - started:7.0f} s] {text}',  # noqa: E731
                             flush=True)

    # ---- 1. each regulariser's setting, chosen on the MLP by rotated group CV on SKAB
    choices: dict[str, dict[str, dict[str, Any]]] = {}     # family -> held-out group -> opts
    defaults: dict[str, dict[str, Any]] = {}
    grid_rows: dict[str, list[Row]] = {}
    if not args.no_skab:
        for family, grid in [*GRIDS.items(), ('pca', PCA_GRID)]:
            arch = 'pca' if family == 'pca' else 'mlp'
            rows = []
            for opts in grid:
                cfg = C(f'{arch} {grid_name(family, opts)}', family, arch=arch, **opts)
                per_file = [skab_file(f, cfg, work, args) for f in files]
                rows.append(Row(cfg, {'files': per_file}))
                log(f'grid {cfg.name}: AUC {skab_figures(per_file)["auc"]:.3f}')
            grid_rows[family] = rows

            def best_on(groups: tuple[str, ...], rows: list[Row] = rows) -> Row:
                return max(rows, key=lambda r: skab_figures(
                    [x for x in r.skab['files'] if x['group'] in groups])['auc'] or 0.0)

            choices[family] = {g: dict(best_on((g,)).cfg.options) for g in GROUPS}
            defaults[family] = dict(best_on(GROUPS).cfg.options)
            log(f'{family}: chosen per group '
                + ', '.join(f'{g}: {grid_name(family, choices[family][g])}' for g in GROUPS)
                + f'; default (all groups): {grid_name(family, defaults[family])}')
    else:
        defaults = {family: dict(grid[1 if family != 'pca' else 1]) for family, grid in
                    [*GRIDS.items(), ('pca', PCA_GRID)]}

    # ---- 2. the table's rows: every architecture x regulariser with the chosen settings
    def strip(opts: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in opts.items() if k != 'arch'}

    table: list[tuple[str, str, Callable[[str | None], Config]]] = []
    table.append(('robust_z', 'none', lambda g: C('robust z', arch='robust_z')))
    table.append(('pca', 'none', lambda g: C('pca T2+Q', arch='pca', **strip(
        (choices['pca'][g] if g else defaults['pca'])))))
    for arch in NETWORKS:
        table.append((arch, 'none', lambda g, a=arch: C(a, arch=a)))
        if arch == 'conv':
            table.append((arch, 'transposed', lambda g: C('conv transposed', arch='conv',
                                                          upsample='transposed')))
        for family in GRIDS:
            def make(g: str | None, a: str = arch, fam: str = family) -> Config:
                opts = strip(choices[fam][g] if g else defaults[fam])
                return C(f'{a} {grid_name(fam, opts)}', arch=a, **opts)
            table.append((arch, family, make))
    # undercomplete vs overcomplete: the MLP with a code larger than its input
    table.append(('mlp', 'overcomplete', lambda g: C('mlp overcomplete', arch='mlp')))
    table.append(('mlp', 'overcomplete+sparse', lambda g: C(
        'mlp overcomplete sparse', arch='mlp', **strip(choices['sparse'][g] if g
                                                        else defaults['sparse']))))

    def overcomplete(cfg: Config, inputs: int) -> Config:
        if 'overcomplete' not in cfg.name:
            return cfg
        size = int(np.ceil(inputs * 1.1))
        return Config(cfg.name, cfg.options + (('hidden', size), ('latent', size)))

    rows: list[Row] = []
    skab_inputs = 0
    if not args.no_skab:
        from encdec_ros.io.spec import SignalSpec
        from encdec_ros.io.csvbag import read_csv_table

        table_csv = read_csv_table(files[0], sep=';', time_col='datetime', label_col='anomaly',
                                   exclude=['changepoint'])
        # the window the CLI's CSV bag spec takes (written by encdec bag from-csv)
        skab_file(files[0], C('robust z', arch='robust_z'), work, args)
        bag_spec = SignalSpec.load(bags_dir / 'skab_bags' / f'{files[0].parent.name}_'
                                   f'{files[0].stem}' / 'spec.yaml')
        skab_inputs = bag_spec.window * len(table_csv.columns)
    for arch, family, make in table:
        row = Row(make(None))
        if not args.no_skab:
            rotated = []
            for g in GROUPS:
                cfg = overcomplete(make(g), skab_inputs)
                rotated += [skab_file(f, cfg, work, args) for f in files
                            if f.parent.name != g]
            row.skab = skab_figures(rotated)
            row.skab['rotated_rows'] = rotated
        rows.append(row)
        log(f'SKAB {row.cfg.name}: ' + (f'F1 {row.skab["f1"]:.3f} FAR '
                                         f'{100 * row.skab["far"]:.1f} % AUC '
                                         f'{row.skab["auc"]:.3f}' if row.skab else 'skipped'))

    # ---- 3. the synthetic robot with the defaults (never used for a choice)
    if not args.no_sim:
        train_bags = [sim_flight(work, f'normal_{s}', int(s), args.train_duration, 'none')
                      for s in args.train_seeds.split(',')]
        test_bags = [sim_flight(work, f'faults_{s}', int(s), args.test_duration, 'all')
                     for s in args.test_seeds.split(',')]
        sim_inputs = 50 * 22
        for row in rows:
            cfg = overcomplete(row.cfg, sim_inputs)
            run = sim_run(cfg, work, train_bags, test_bags, args)
            row.sim = {**sim_figures(run['flights']), 'flights': run['flights']}
            row.figures = {k: run[k] for k in ('parameters', 'train_s', 'epochs', 'parity',
                                               'latency_ms', 'wall_s')}
            log(f'sim {cfg.name}: {row.sim["events_detected"]}/{row.sim["events"]} events, '
                f'FA/h {row.sim["false_alarms_per_hour"]:.1f}, trained in '
                f'{run["train_s"]:.0f} s')
    else:
        for row in rows:
            first = row.skab.get('rotated_rows', [{}])[0]
            row.figures = {k: first.get(k) for k in ('parameters', 'train_s', 'parity')}

    # ---- 4. the table
    floor = next((r.figures.get('latency_ms') for r in rows if r.cfg.opts.get('arch') ==
                  'robust_z'), None)
    print()
    print(f'The family, one run ({(time.perf_counter() - started) / 60:.0f} min). SKAB: '
          f'{len(files)} files, fit on the first {FIT_ROWS} rows, settings chosen on one '
          'group and reported on the other two, rotated and pooled. Sim: trained on '
          f'{len(args.train_seeds.split(","))} x {args.train_duration:g} s, '
          f'{len(args.test_seeds.split(","))} x {args.test_duration:g} s held-out fault '
          'flights (6 kinds each).')
    head = (f'{"row":<38} {"params":>8} {"train s":>7} {"ms@1":>6} {"xfloor":>6} '
            f'{"parity":>7} | {"kinds":>5} {"events":>6} {"delay":>5} {"FAR*%":>6} '
            f'{"FA/h":>5} | {"F1":>5} {"FAR%":>5} {"MAR%":>5} {"AUC":>5}')
    print(head)
    print('-' * len(head))
    for row in rows:
        f, s, k = row.figures, row.sim, row.skab
        lat = f.get('latency_ms')
        cells = [f'{row.cfg.name:<38}', f'{f.get("parameters") or 0:>8}',
                 f'{f.get("train_s") or 0:>7.1f}',
                 f'{lat:>6.3f}' if lat else f'{"":>6}',
                 f'{lat / floor:>6.1f}' if lat and floor else f'{"":>6}',
                 f'{f.get("parity") or 0:>7.1e}', '|']
        if s:
            delay = s['mean_delay_s']
            cells += [f'{s["kinds_detected"]:>3}/6', f'{s["events_detected"]:>3}/{s["events"]:<2}',
                      f'{delay:>5.2f}' if delay is not None else f'{"-":>5}',
                      f'{100 * s["far_after_grace"]:>6.2f}',
                      f'{s["false_alarms_per_hour"]:>5.1f}', '|']
        else:
            cells += [f'{"":>5} {"":>6} {"":>5} {"":>6} {"":>5}', '|']
        if k:
            cells += [f'{k["f1"]:>5.3f}', f'{100 * k["far"]:>5.1f}', f'{100 * k["mar"]:>5.1f}',
                      f'{k["auc"]:>5.3f}']
        print(' '.join(cells))
    if rows and rows[0].skab:
        print(f'flag every point on the same SKAB points: F1 {rows[0].skab["flag_all_f1"]:.3f}')
    print('CLI flags per row (beside the defaults; overcomplete: --hidden and --latent '
          f'{int(np.ceil(1.1 * skab_inputs))} on SKAB, 1210 on the sim):')
    for row in rows:
        print(f'  {row.cfg.name:<38} encdec train anomaly ... {row.cfg.cli}')
    # ---- 5. the default architecture, by cross-validation
    choice = choose_default(rows, args)
    for line in choice['lines']:
        print(line)
    if args.json:
        out = {'settings': vars(args), 'choices': choices, 'defaults': defaults,
               'grids': {fam: [{'name': r.cfg.name, **skab_figures(r.skab['files'])}
                               for r in rs] for fam, rs in grid_rows.items()},
               'rows': [{'name': r.cfg.name, 'options': r.cfg.opts, 'figures': r.figures,
                         'sim': {k: v for k, v in r.sim.items() if k != 'flights'},
                         'skab': {k: v for k, v in r.skab.items() if k != 'rotated_rows'}}
                        for r in rows],
               'default_architecture': {k: v for k, v in choice.items() if k != 'lines'},
               'minutes': round((time.perf_counter() - started) / 60, 1)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def choose_default(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    """The row chosen on part of the data, reported on the rest: SKAB (choose by AUC on two
    groups, report the third, rotated) and the sim (choose on half the fault flights by
    faults detected less false alarms, report the other half)."""
    lines = ['', 'default architecture by cross-validation:']
    out: dict[str, Any] = {'skab': {}, 'sim': {}}
    if rows and rows[0].skab:
        for g in GROUPS:
            def on(row: Row, groups: set[str]) -> dict[str, Any]:
                return skab_figures([x for x in row.skab['rotated_rows']
                                     if x['group'] in groups])
            others = set(GROUPS) - {g}
            best = max(rows, key=lambda r: on(r, others)['auc'] or 0.0)
            held = on(best, {g})
            out['skab'][g] = {'chosen': best.cfg.name, **{k: held[k] for k in
                                                          ('f1', 'far', 'mar', 'auc')}}
            lines.append(f'  SKAB: chosen on {"+".join(sorted(others))}: {best.cfg.name}; on '
                         f'{g}: F1 {held["f1"]:.3f} FAR {100 * held["far"]:.1f} % AUC '
                         f'{held["auc"]:.3f}')
    if rows and rows[0].sim:
        flights = [f['flight'] for f in rows[0].sim['flights']]
        half = len(flights) // 2
        for a, b in ((flights[:half], flights[half:]), (flights[half:], flights[:half])):
            def fig(row: Row, names: list[str]) -> dict[str, Any]:
                return sim_figures([f for f in row.sim['flights'] if f['flight'] in names])
            best = max(rows, key=lambda r: sim_score(fig(r, a)))
            held = fig(best, b)
            out['sim'][','.join(b)] = {'chosen': best.cfg.name, **held}
            lines.append(f'  sim: chosen on {",".join(a)}: {best.cfg.name}; on {",".join(b)}: '
                         f'{held["events_detected"]}/{held["events"]} events, FA/h '
                         f'{held["false_alarms_per_hour"]:.1f}, FAR* '
                         f'{100 * held["far_after_grace"]:.2f} %')
    out['lines'] = lines
    return out


if __name__ == '__main__':
    sys.exit(main())
