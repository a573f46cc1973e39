"""`encdec bench`: its arguments, its tables, and one tiny ingest comparison (a benchmark
prints figures and does not fail on them; the suite only checks that it runs)."""

from __future__ import annotations

import numpy as np

from encdec_ros.cli import build_parser, main


def parse(*argv: str):
    from encdec_ros.cli.bench import options_from
    return options_from(build_parser().parse_args(['bench', *argv]))


def test_arguments_choose_sections_and_refuse_nonsense(capsys):
    opts = parse('--only', 'ingest,inference', '--rounds', '3', '--batches', '1,8',
                 '--rates', '100')
    assert opts.sections == ('ingest', 'inference') and opts.rounds == 3
    assert opts.batches == (1, 8) and opts.rates == (100.0,)
    assert parse().sections == ('subscriber', 'latency', 'ingest', 'inference')
    for argv, text in ((['--only', 'speed'], "unknown section 'speed'"),
                       (['--rates', 'fast'], 'must be comma-separated numbers'),
                       (['--bag', 'x.mcap'], '--bag needs --spec'),
                       (['--seconds', '0'], '--seconds must be a positive'),
                       (['--domain-id', '999'], 'out of range')):
        assert main(['bench', *argv]) == 2
        assert text in capsys.readouterr().err


def test_decision_latency_is_counted_from_the_message_that_completes_the_tick():
    from encdec_ros.bench.live import decision_latency

    stamps = {'imu': [90, 105, 110], 'motors': [95, 120]}
    # tick 100 is final once both topics have a message after it: motors at 120
    got = decision_latency([(100, 125), (115, 200), (130, 300)], stamps)
    np.testing.assert_array_equal(got, [5])


def test_tiny_ingest_comparison_is_identical_and_tabled(tmp_path):
    from encdec_ros.bench import tables
    from encdec_ros.bench.ingest import IMU_SPEC, compare, write_bags
    from encdec_ros.io.spec import SignalSpec

    bags = write_bags(tmp_path, 300, lambda text: None)
    row = compare('Imu sqlite3', bags[0][1], SignalSpec.from_dict(IMU_SPEC), rounds=1)
    assert row['identical'] and row['messages'] == 300 and row['ratio'] > 0
    text = tables({'machine': {'cpus': 2, 'load_1min': 1.0, 'python': '3'}, 'ingest': [row],
                   'ingest_notes': ['a note']})
    assert 'Imu sqlite3' in text and 'yes' in text and 'note (ingest): a note' in text


def test_the_bench_and_the_decoder_do_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = ('import sys, encdec_ros.bench.ingest, encdec_ros.bench.inference, '
            'encdec_ros.bench.live, encdec_ros.bench.worker, encdec_ros.cli.bench, '
            'encdec_ros.io.cdr, encdec_ros.io.bag; print("torch" in sys.modules)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'False'
