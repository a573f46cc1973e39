"""Training on a fleet's bags: bag sets, the shard cache, streamed windows, torchrun (DDP).

The fleet is three 12 s flights of two simulated vehicles (training.simfleet). The torchrun
test trains the same tiny model with one process and with two (gloo) and compares them; how
memory and speed scale with the number of bags is measured by benchmarks/bench_fleet.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from encdec_ros.errors import BagError
from encdec_ros.io.bagset import bag_identity, expand_bags, unique_names

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / 'config' / 'sim_spec.yaml'
TINY = ['--arch', 'mlp', '--hidden', '16', '--latent', '4', '--window', '20', '--stride', '4',
        '--epochs', '2', '--batch-size', '32', '--seed', '3', '--threads', '1']
TOLERANCE = 1e-4
"""Relative agreement of the one- and two-process models' scores (see the torchrun test)."""


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    """Three 12 s flights of two vehicles, written as the fleet command writes them."""
    from training.simfleet import plan_fleet, write_fleet

    root = tmp_path_factory.mktemp('fleet') / 'flights'
    flights = plan_fleet(flights=3, seed=20, vehicles=2, duration_s=12.0)
    manifest = write_fleet(flights, root, jobs=1, show_progress=False)
    return {'root': root, 'bags': [root / f.name for f in flights], 'manifest': manifest}


# --------------------------------------------------------------------------- bag sets


def _touch(path: Path, text: str = 'x') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bag_sets_expand_folders_patterns_and_list_files(tmp_path):
    root = tmp_path / 'logs'
    _touch(root / 'a' / 'metadata.yaml')                  # a rosbag2 directory, split in two
    _touch(root / 'a' / 'a_0.db3')
    _touch(root / 'a' / 'a_1.db3')
    _touch(root / 'b' / 'b_0.mcap')                       # one without its metadata.yaml
    _touch(root / 'c' / 'x.mcap')                         # loose files: a bag each
    _touch(root / 'c' / 'y.db3')
    _touch(root / 'c' / 'z.bag')
    _touch(root / 'c' / 'notes.txt')
    _touch(root / 'c' / 'deep' / 'w.mcap')
    _touch(root / '.encdec_shards' / 'cached.mcap')        # hidden folders are not searched
    want = [root / 'a', root / 'b', root / 'c' / 'deep' / 'w.mcap', root / 'c' / 'x.mcap',
            root / 'c' / 'y.db3', root / 'c' / 'z.bag']
    assert expand_bags([root]) == want
    # the same bags named twice, or a folder and a bag in it, count once
    assert expand_bags([root / 'a', str(root / 'a') + '/', root]) == want
    # patterns: a storage file of a rosbag2 directory stands for its directory
    assert expand_bags([str(root / '**' / '*.db3')]) == [root / 'a', root / 'c' / 'y.db3']
    assert expand_bags([str(root / 'c' / '*.mcap')]) == [root / 'c' / 'x.mcap']
    # a list file: comments, blank lines, paths relative to it, patterns and folders
    listing = _touch(tmp_path / 'bags.txt', '# the good flights\n\nlogs/a   # first\n'
                                            'logs/c/*.db3\n' + f'{root / "b"}\n')
    assert expand_bags([listing]) == [root / 'a', root / 'c' / 'y.db3', root / 'b']
    assert expand_bags(['@' + str(listing)]) == expand_bags([listing])
    # one sentence for what matches nothing
    with pytest.raises(BagError, match=r'the --bag pattern .*nope\*.mcap matches nothing'):
        expand_bags([str(root / 'nope*.mcap')])
    with pytest.raises(BagError, match='holds no rosbag2 directory'):
        expand_bags([_touch(tmp_path / 'empty' / 'readme.md').parent])
    _touch(tmp_path / 'bad.txt', 'logs/a\nlogs/missing\n')
    with pytest.raises(BagError, match=r'bad.txt line 2: .*missing does not exist'):
        expand_bags([tmp_path / 'bad.txt'])
    assert unique_names([root / 'a', root / 'c' / 'x.mcap', tmp_path / 'x.mcap']) == \
        ['a', '001_x', '002_x']


def test_a_pattern_that_matches_nothing_is_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'encdec_ros', 'train', 'anomaly', '--bag',
                           str(tmp_path / 'flights*'), '--spec', str(SPEC), '--out',
                           str(tmp_path / 'm')], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1 and 'matches nothing' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_inspect_sums_up_a_set_of_bags(fleet, capsys):
    from encdec_ros.cli import main
    from encdec_ros.io.bag import BagSource

    assert main(['inspect', str(fleet['root']), '--spec', str(SPEC)]) == 0
    text = capsys.readouterr().out
    counts = {}
    for bag in fleet['bags']:
        with BagSource(bag) as source:
            for name, info in source.topics.items():
                counts[name] = counts.get(name, 0) + info.count
    assert 'bags:     3, 3 sqlite3' in text
    assert f'{sum(counts.values())} messages' in text and '(36.0 s)' in text
    imu = next(line for line in text.splitlines() if line.startswith('/imu '))
    assert imu.split()[2:4] == [str(counts['/imu']), '3']
    assert 'resolves in 3 of 3 readable bags' in text
    # the bag list the fleet command wrote names the same bags
    assert expand_bags([fleet['root'] / 'bags.txt']) == fleet['bags']


def test_sim_writes_a_fleet_in_parallel(tmp_path, capsys):
    from encdec_ros.cli import main

    out = tmp_path / 'fleet'
    assert main(['sim', '--flights', '3', '--vehicles', '2', '--duration', '3', '--seed', '7',
                 '--jobs', '2', '--out', str(out)]) == 0
    assert 'wrote 3 flights' in capsys.readouterr().out
    manifest = yaml.safe_load((out / 'fleet.yaml').read_text())
    assert [f['name'] for f in manifest['flights']] == ['v0_seed7', 'v1_seed8', 'v0_seed9']
    masses = {v: p['mass_kg'] for v, p in manifest['vehicles'].items()}
    assert masses[0] == 2.0 and masses[1] != 2.0
    assert [p.name for p in expand_bags([out])] == ['v0_seed7', 'v0_seed9', 'v1_seed8']
    assert main(['sim', '--flights', '2', '--out', str(out)]) == 2      # never overwritten


# --------------------------------------------------------------------------- data


def test_moments_merged_bag_by_bag_equal_all_rows_at_once():
    from training.anomaly import fit_normalization
    from training.data import Moments

    rng = np.random.default_rng(0)
    rows = rng.normal(3.0, 2.0, (5000, 4)) * [1, 10, 0.01, 1e3]
    rows[rng.random(rows.shape) < 0.05] = np.nan
    parts = np.split(rows, [7, 1000, 1001, 3500])
    merged = Moments.combine(Moments.of_rows(p) for p in parts)
    mean, std, _ = fit_normalization(rows, list('abcd'))
    np.testing.assert_allclose(merged.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(merged.std, std, rtol=1e-12)
    np.testing.assert_allclose(mean, np.nanmean(rows, axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, np.nanstd(rows, axis=0), rtol=1e-12)


def _resolved_spec(bag: Path, window: int = 20, stride: int = 4):
    from encdec_ros.io.bag import BagSource, bind_spec
    from encdec_ros.io.spec import SignalSpec

    with BagSource(bag) as source:
        return bind_spec(SignalSpec.load(SPEC).with_window(window=window, stride=stride),
                         source)


def test_shards_are_keyed_by_the_bags_content_and_the_spec(fleet, tmp_path):
    from encdec_ros.io.bag import read_bag
    from training.data import ShardCache

    bag = fleet['bags'][0]
    spec = _resolved_spec(bag)
    cache = ShardCache(tmp_path / 'cache', spec)
    shard, built = cache.load(bag)
    assert built and not cache.load(bag)[1]                   # the second time: cached
    rec = read_bag(bag, spec)
    np.testing.assert_array_equal(shard.data, rec.data)
    np.testing.assert_array_equal(shard.times_ns, rec.times_ns)
    key = cache.key(bag)
    # another window or stride reads the same shard; other fields or a changed bag do not
    assert ShardCache(tmp_path / 'cache', _resolved_spec(bag, 50, 5)).key(bag) == key
    fewer = spec.to_dict()
    fewer['topics'].pop('/wrench_cmd')
    from encdec_ros.io.spec import SignalSpec
    assert ShardCache(tmp_path / 'cache', SignalSpec.from_dict(fewer)).key(bag) != key
    labels = bag / 'labels.csv'
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.key(bag) != key and len(bag_identity(bag)) >= 3


def _windows_in_memory(bags, spec, opts):
    """The windows as training read them before shards: whole recordings in memory."""
    from encdec_ros.io.bag import read_bag
    from encdec_ros.io.window import window_ends, windows_at
    from training.anomaly import _blocks_of

    out = {'train': [], 'val': [], 'calib': []}
    for bag in bags:
        rec = read_bag(bag, spec)
        for name, lo, hi in _blocks_of(rec, span=None, window=spec.window,
                                       val_fraction=opts['val'], calib_fraction=opts['calib']):
            stride = opts['train_stride'] if name == 'train' else spec.stride
            ends = window_ends(rec.times_ns[lo:hi], spec.period_ns, spec.window, stride)
            wins = windows_at(rec.data[lo:hi], ends, spec.window)
            out[name].append(wins[np.isfinite(wins).all(axis=(1, 2))])
    return {k: np.concatenate(v) for k, v in out.items()}


def _streamed(bags, spec, cache, *, shuffle_shards: int):
    import functools

    from training.anomaly import _blocks_of
    from training.data import ShardCache, ShardedWindows, WindowPlan
    from training.distributed import Dist

    plan = WindowPlan(window=spec.window, period_ns=spec.period_ns,
                      strides={'train': 3, 'val': spec.stride, 'calib': spec.stride},
                      exclude_labelled=True,
                      blocks=functools.partial(_blocks_of, span=None, window=spec.window,
                                               val_fraction=0.15, calib_fraction=0.15))
    return ShardedWindows(bags, spec, ShardCache(cache, spec), plan, dist=Dist(), seed=1,
                          shuffle_shards=shuffle_shards, workers=0)


def test_streamed_windows_are_those_of_an_in_memory_run(fleet, tmp_path):
    import torch

    bags = fleet['bags']
    spec = _resolved_spec(bags[0])
    ref = _windows_in_memory(bags, spec, {'val': 0.15, 'calib': 0.15, 'train_stride': 3})
    data = _streamed(bags, spec, tmp_path / 'cache', shuffle_shards=8)
    data.summarise()
    for split in ('train', 'val', 'calib'):
        assert data.count(split) == len(ref[split])
    mean, std = np.zeros(len(spec.channels)), np.ones(len(spec.channels))
    data.set_normalization(mean, std)
    # one group (all bags): the batches of one permutation over all windows in bag order
    gen, twin = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = [x for x, _ in data.train_batches(1, 50, gen)]
    perm = torch.randperm(len(ref['train']), generator=twin).numpy()
    want = [ref['train'][perm[lo:lo + 50]] for lo in range(0, len(perm), 50)]
    assert len(got) == len(want) == data.batches_per_epoch(1, 50)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b)
    held = np.concatenate([w.numpy() for _, _, w in data.held_out('val')])
    np.testing.assert_array_equal(held, ref['val'])


@pytest.mark.parametrize('shuffle_shards', [1, 2])
def test_windows_are_shuffled_across_shards_with_few_in_memory(fleet, tmp_path,
                                                               shuffle_shards):
    import torch

    bags = fleet['bags']
    spec = _resolved_spec(bags[0])
    data = _streamed(bags, spec, tmp_path / 'cache', shuffle_shards=shuffle_shards)
    data.summarise()
    c = len(spec.channels)
    data.set_normalization(np.zeros(c), np.ones(c))
    # tell the bags apart by a column: each window's bag is where its first row came from
    first_rows = {}
    for g in range(len(bags)):
        for x in data._prepared([g]):
            first_rows[g] = {tuple(r) for r in x.data.numpy()[:, :3].round(6)}
    gen = torch.Generator().manual_seed(0)
    seen, mixed = 0, 0
    for epoch in (1, 2):
        groups = data.groups(epoch)
        assert all(len(grp) <= shuffle_shards for grp in groups)
        assert sorted(g for grp in groups for g in grp) == [0, 1, 2]
        for x, _ in data.train_batches(epoch, 40, gen):
            assert len(data._lru) <= shuffle_shards           # memory: one group's shards
            owners = {next(g for g, rows in first_rows.items()
                           if tuple(w[0, :3].round(6)) in rows) for w in x.numpy()}
            mixed += len(owners) > 1
            seen += len(x)
    assert seen == 2 * data.count('train')                     # each window once an epoch
    assert (mixed > 0) == (shuffle_shards > 1)


# --------------------------------------------------------------------------- torchrun


def _scores(model: Path, bag: Path) -> np.ndarray:
    from encdec_ros.anomaly.evaluate import evaluate_bag

    return evaluate_bag(model, bag).scores


def test_torchrun_two_processes_train_the_model_of_one(fleet, tmp_path):
    """Two gloo processes through torchrun and one process, same data, seed and global batch.

    training.data gives both runs the same global batches in the same order (each process
    trains on its part of every batch, weighted so that DistributedDataParallel's average is
    the whole batch's gradient), so the models differ only by float rounding: two partial
    gradient sums all-reduced instead of one sum. Over these few dozen Adam steps that stays
    below 1e-4 of the scores (TOLERANCE); a model trained on another order (another seed) is
    more than a hundred times further off, so the comparison can tell them apart.
    """
    from encdec_ros.anomaly.scorer import AnomalyScorer
    from encdec_ros.cli import main

    bags = fleet['root'] / 'bags.txt'
    cache = tmp_path / 'cache'
    # --folds 0: the hold-out split in both (one process would cross-fit this little data)
    common = ['train', 'anomaly', '--bag', str(bags), '--spec', str(SPEC), '--cache',
              str(cache), '--folds', '0', *TINY]
    assert main(common + ['--out', str(tmp_path / 'one')]) == 0
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                           '--nproc_per_node=2', '-m', 'encdec_ros', *common, '--out',
                           str(tmp_path / 'two')], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count('wrote ') == 1 and proc.stdout.count('data: 3 bag(s)') == 1
    assert '2 processes (gloo)' in proc.stdout and 'Traceback' not in proc.stderr
    two = tmp_path / 'two'
    assert {p.name for p in two.iterdir()} == {'model.onnx', 'model.yaml', 'loss.png'}
    meta = yaml.safe_load((two / 'model.yaml').read_text())
    assert meta['training']['processes'] == 2
    one_meta = yaml.safe_load((tmp_path / 'one' / 'model.yaml').read_text())
    assert meta['training']['windows'] == one_meta['training']['windows']
    np.testing.assert_allclose(meta['threshold'], one_meta['threshold'], rtol=TOLERANCE)
    AnomalyScorer(two, device='cpu')                            # loads in the runtime
    probe = fleet['bags'][1]
    one, two_s = _scores(tmp_path / 'one', probe), _scores(two, probe)
    scale = np.abs(one).max()
    assert np.abs(two_s - one).max() <= TOLERANCE * scale
    other = common[:-2] + ['--seed', '4', '--threads', '1', '--out', str(tmp_path / 'other')]
    assert main(other) == 0
    assert np.abs(_scores(tmp_path / 'other', probe) - one).max() > 100 * TOLERANCE * scale


def test_eval_over_a_set_of_bags_pools_the_figures(fleet, tmp_path, capsys):
    import json

    from encdec_ros.cli import main

    model = tmp_path / 'model'
    assert main(['train', 'anomaly', '--bag', str(fleet['root']), '--spec', str(SPEC),
                 '--cache', str(tmp_path / 'cache'), *TINY, '--out', str(model)]) == 0
    out = tmp_path / 'eval'
    assert main(['eval', 'anomaly', '--model', str(model), '--bag', str(fleet['root']),
                 '--no-plot', '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'pooled over 3 bags' in text
    summary = json.loads((out / 'summary.json').read_text())
    assert [Path(b['bag']).name for b in summary['bags']] == sorted(b.name for b in
                                                                     fleet['bags'])
    assert all((out / b.name / 'report.json').is_file() for b in fleet['bags'])
    decisions = sum(json.loads((out / b.name / 'report.json').read_text())['metrics']
                    ['pointwise']['tn'] for b in fleet['bags'])
    assert summary['pooled']['tn'] == decisions
    # the allocator's evaluation scores the wrenches of every bag of the set
    report = tmp_path / 'alloc.json'
    assert main(['eval', 'allocator', '--effectiveness', str(ROOT / 'config' / 'sim_hexa.yaml'),
                 '--methods', 'pseudo_inverse', '--no-timing', '--samples', '100000',
                 '--bag', str(fleet['root'] / 'bags.txt'), '--report', str(report)]) == 0
    samples = json.loads(report.read_text())['samples']
    assert samples['total'] == 3 * 1200                  # 12 s of /wrench_cmd at 100 Hz each
    assert samples['source'].startswith(str(fleet['root'] / 'bags.txt'))
