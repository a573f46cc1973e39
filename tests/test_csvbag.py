"""CSV logs from other tools into rosbag2: a real SKAB file and the ways a CSV goes wrong."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from data_paths import shared

from encdec_ros.errors import BagError, ConfigError
from encdec_ros.io.bag import BagSource, read_bag
from encdec_ros.io.csvbag import csv_to_bag, read_csv_table
from encdec_ros.io.labels import LABEL_TOPIC, read_labels_csv
from encdec_ros.io.spec import SignalSpec


def test_skab_file_round_trips_values_times_and_labels(tmp_path):
    src = shared('skab', 'valve1', '0.csv')
    out, table = csv_to_bag(src, tmp_path / 'skab', sep=';', time_col='datetime',
                            label_col='anomaly', exclude=['changepoint'])
    with src.open() as fh:
        rows = list(csv.DictReader(fh, delimiter=';'))
    columns = [c for c in rows[0] if c not in ('datetime', 'anomaly', 'changepoint')]
    assert table.columns == columns and len(columns) == 8
    spec = SignalSpec.load(out / 'spec.yaml')
    assert spec.rate_hz == pytest.approx(1.0)
    rec = read_bag(out, spec)
    assert rec.channels == [f'/csv/data/{c}' for c in columns]
    stream = rec.streams['/csv/data']
    assert stream.values.shape == (len(rows), 8)
    np.testing.assert_array_equal(stream.values[:, 2], [float(r['Current']) for r in rows])
    first = np.datetime64(rows[0]['datetime'].replace(' ', 'T'), 'ns').astype(np.int64)
    assert stream.stamps_ns[0] == first
    # labels: the sidecar intervals cover exactly the rows marked anomalous
    marked = np.array([float(r['anomaly']) > 0 for r in rows])
    mask = rec.label_mask()
    idx = np.searchsorted(stream.stamps_ns, rec.times_ns)
    np.testing.assert_array_equal(mask, marked[idx])
    assert read_labels_csv(out / 'labels.csv')[0].kind == 'anomaly'
    with BagSource(out) as bag:
        assert LABEL_TOPIC in bag.topics and bag.topics['/csv/data'].count == len(rows)


def test_numeric_seconds_mcap_and_missing_cells(tmp_path):
    src = tmp_path / 'log.csv'
    src.write_text('t,a,b\n0.0,1,2\n0.5,3,\n1.0,5,6\n1.5,7,8\n')
    out, table = csv_to_bag(src, tmp_path / 'bag', storage='mcap', window=2)
    assert table.times_ns.tolist() == [0, 500_000_000, 1_000_000_000, 1_500_000_000]
    assert len(table.warnings) == 1
    assert "the first at line 3 in column 'b'" in table.warnings[0]
    assert 'pass --drop-empty to drop those rows' in table.warnings[0]
    rec = read_bag(out, SignalSpec.load(out / 'spec.yaml'))
    assert np.isnan(rec.streams['/csv/data'].values[1, 1])
    _, dropped = csv_to_bag(src, tmp_path / 'bag2', drop_empty=True, window=2)
    assert dropped.times_ns.tolist() == [0, 1_000_000_000, 1_500_000_000]
    assert not np.isnan(dropped.values).any()
    assert dropped.warnings == ['dropped 1 row(s) with empty cells (--drop-empty)']


def test_skab_without_options_detects_separator_time_labels_and_changepoints(tmp_path):
    src = shared('skab', 'valve1', '0.csv')
    _, given = csv_to_bag(src, tmp_path / 'given', sep=';', time_col='datetime',
                          label_col='anomaly', exclude=['changepoint'])
    out, table = csv_to_bag(src, tmp_path / 'auto')
    assert table.columns == given.columns
    np.testing.assert_array_equal(table.values, given.values)
    np.testing.assert_array_equal(table.labels, given.labels)
    assert list(table.label_columns) == ['anomaly']
    assert table.detected == (
        "read 0.csv: 1147 rows, separator semicolon, decimal point, time 'datetime' "
        "(date-times, UTC unless they say otherwise), label 'anomaly' by name and content, "
        "8 data columns; left out: 'changepoint' (marks change points; --label-col to use "
        'it as labels)')
    assert (out / 'labels.csv').read_text() == (tmp_path / 'given' / 'labels.csv').read_text()


MESSY = (
    '\ufeffZeit;Strom A;Temp;Greifer zu;Modus;stop_fault;grip_failure;Unnamed: 8;\n'
    '09.03.2020 10:14:33,000;1,5;28,1;True;RUN;False;0;0;\n'
    '09.03.2020 10:14:33,500;1,6;28,2;False;RUN;False;0;1;\n'
    '09.03.2020 10:14:34,000;-2,5e-1;28,3;true;RUN;True;0;2;\n'
    '09.03.2020 10:14:34,500;1,7;;FALSE;STOP;True;1;3;\n'
    '09.03.2020 10:14:35,000;1,8;28,5;yes;RUN;False;1;4;\n'
    '09.03.2020 10:14:35,500;1,9;28,6;no;RUN;False;0;5;\n'
)


def test_a_messy_real_world_log_converts_without_options(tmp_path):
    """BOM, semicolons with decimal commas, day-first date-times with a comma before the
    milliseconds, boolean cells, a text column, two label columns, a pandas index column, a
    trailing separator and an empty cell."""
    src = tmp_path / 'ur3.csv'
    src.write_bytes(MESSY.encode('utf-8'))
    out, table = csv_to_bag(src, tmp_path / 'bag', window=2)
    assert table.columns == ['Strom A', 'Temp', 'Greifer zu']
    np.testing.assert_allclose(table.values[:, 0], [1.5, 1.6, -0.25, 1.7, 1.8, 1.9])
    np.testing.assert_array_equal(table.values[:, 2], [1, 0, 1, 0, 1, 0])
    assert np.isnan(table.values[3, 1])
    assert np.diff(table.times_ns).tolist() == [500_000_000] * 5
    assert list(table.label_columns) == ['stop_fault', 'grip_failure']
    assert table.labels.tolist() == [False, False, True, True, True, False]
    assert "decimal comma, time 'Zeit' (date-times" in table.detected
    assert "labels 'stop_fault' + 'grip_failure' by name and content (anomalous when any " \
           'is set)' in table.detected
    assert "left out: 'Unnamed: 8' (unnamed), 'column 9' (unnamed), 'Modus' (text)" \
        in table.detected
    assert "line 5 in column 'Temp'" in table.warnings[0]
    kinds = {(iv.kind, iv.start_ns - int(table.times_ns[0])) for iv in
             read_labels_csv(out / 'labels.csv')}
    assert kinds == {('stop_fault', 1_000_000_000), ('grip_failure', 1_500_000_000)}
    rec = read_bag(out, SignalSpec.load(out / 'spec.yaml'))
    assert rec.channels == ['/csv/data/Strom A', '/csv/data/Temp', '/csv/data/Greifer zu']
    assert len(rec.labels) == 2
    # the same with the options spelt out, and the rows with the empty cell dropped
    _, given = csv_to_bag(src, tmp_path / 'given', sep=';', decimal=',', time_col='Zeit',
                          label_col=['stop_fault', 'grip_failure'], exclude=['Modus'],
                          drop_empty=True, window=2)
    assert given.labels.tolist() == [False, False, True, True, False]


def test_time_columns_by_name_unit_and_content(tmp_path):
    src = tmp_path / 'a.csv'
    src.write_text('value,Time (ms),fault\n1,0,0\n2,10,0\n3,20,1\n4,30,0\n')
    table = read_csv_table(src)
    assert table.times_ns.tolist() == [0, 10_000_000, 20_000_000, 30_000_000]
    assert "time 'Time (ms)' (numbers in ms from the column name)" in table.detected
    assert table.labels.tolist() == [False, False, True, False]
    src.write_text('%time,field.data\n1700000000000000000,1\n1700000000010000000,2\n')
    table = read_csv_table(src)                    # rostopic echo -p: nanoseconds
    assert table.times_ns.tolist() == [1_700_000_000_000_000_000, 1_700_000_000_010_000_000]
    src.write_text('when\tx\n2024-05-01T10:00:00Z\t1\n2024-05-01T10:00:01Z\t2\n')
    table = read_csv_table(src)                    # no time name: the column of date-times
    assert "separator tab" in table.detected and "time 'when'" in table.detected
    src.write_text('a,b\n1,2\n3,4\n')
    with pytest.raises(BagError, match='no time column found .* name it with --time-col'):
        read_csv_table(src)
    src.write_text('time,x\n0,1\n0,2\n0,3\n1,4\n1,5\n')
    with pytest.raises(BagError, match="repeats the row before in 3 of 5 rows"):
        read_csv_table(src)


def test_a_failed_conversion_leaves_nothing_and_keeps_the_old_output(tmp_path, monkeypatch):
    from encdec_ros.io import csvbag

    src = tmp_path / 'log.csv'
    src.write_text('t,a\n' + ''.join(f'{i},{i}\n' for i in range(20)))
    old, _ = csv_to_bag(src, tmp_path / 'out', window=4)
    before = sorted(p.name for p in old.iterdir())

    def broken(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(csvbag, '_write_spec', broken)
    with pytest.raises(OSError, match='disk full'):
        csv_to_bag(src, tmp_path / 'new', window=4)
    with pytest.raises(OSError, match='disk full'):
        csv_to_bag(src, tmp_path / 'out', window=4, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['log.csv', 'out']
    assert sorted(p.name for p in old.iterdir()) == before


def test_spans_in_rows_name_csv_rows(tmp_path):
    from encdec_ros.io.span import Rows, parse_span, resolve_span

    src = tmp_path / 'log.csv'
    # 1 s rows with one missing: row 5 is at 6 s
    src.write_text('t,a\n' + ''.join(f'{t},{t}\n' for t in [0, 1, 2, 3, 4, 6, 7, 8, 9]))
    out, _ = csv_to_bag(src, tmp_path / 'bag', window=2)
    rec = read_bag(out, SignalSpec.load(out / 'spec.yaml'))
    assert parse_span(':5rows') == (None, Rows(5))
    assert parse_span('2rows:7.5') == (Rows(2), 7.5)
    assert resolve_span(parse_span('2rows:5rows'), rec) == (2.0, 6.0)
    assert resolve_span(parse_span('3:100rows'), rec) == (3.0, None)
    with pytest.raises(ConfigError, match='ends before it starts'):
        parse_span('5rows:2rows')
    with pytest.raises(ConfigError, match='rows with a rows suffix'):
        parse_span('a:b')


@pytest.mark.parametrize(('text', 'kwargs', 'message'), [
    ('t,a\n0,1\n1,x\n', {}, r"line 3, column 'a': 'x' is not a number"),
    ('t,a\n0,1\n1,2\n', {'label_col': 'anomaly'}, "no column 'anomaly'"),
    ('t,a\n0,1\n1,2\n', {'columns': ['b']}, "no column 'b'"),
    ('t,a\nyesterday,1\n', {}, "time 'yesterday' in column 't' is neither a number nor a "
                              'date-time'),
    ('t,a\n0,1\n,2\n', {}, "line 3: the time cell in column 't' is empty; fill it, or drop "
                          'such rows with --drop-empty'),
    ('t,a,a\n0,1,2\n', {}, "the column name 'a' appears twice"),
    ('t;a\n0;1.234,5\n1;2\n', {'decimal': ','}, r"'1.234,5' is not a number \(a thousands"),
    ('t,a\n0,1\n1\n', {}, 'line 3: the row has fewer cells'),
    ('t,a\n', {}, 'no data rows'),
    ('t;a\n0;1\n', {'sep': ','}, 'header has one column'),
])
def test_bad_csv_gives_one_clear_sentence_and_writes_nothing(tmp_path, text, kwargs, message):
    src = tmp_path / 'bad.csv'
    src.write_text(text)
    with pytest.raises(BagError, match=message):
        csv_to_bag(src, tmp_path / 'out', **kwargs)
    assert not (tmp_path / 'out').exists()


def test_csv_to_detector_with_no_options(tmp_path, capsys):
    """`encdec bag from-csv FILE --out B`, `encdec train anomaly --bag B --out M` and `encdec
    eval anomaly --model M --bag B` on a log with a time column and two label columns."""
    pytest.importorskip('torch')
    import json

    from encdec_ros.cli import main

    rng = np.random.default_rng(7)
    n = 900
    k = np.arange(n)
    data = np.stack([np.sin(k / 20), np.cos(k / 33), 0.5 * np.sin(k / 7)], axis=1)
    data += rng.normal(scale=0.05, size=data.shape)
    fault = (k >= 600) & (k < 640)
    attack = (k >= 750) & (k < 780)
    data[fault, 0] += 3.0
    data[attack, 2] = 0.0
    start = np.datetime64('2024-05-01T08:00:00')
    lines = ['timestamp,motor_a,motor_b,pump,fault_a,anomaly,changepoint']
    for i in range(n):
        stamp = str(start + np.timedelta64(int(i), 's')).replace('T', ' ')
        lines.append(f'{stamp},{data[i, 0]:.5f},{data[i, 1]:.5f},{data[i, 2]:.5f},'
                     f'{int(fault[i])},{"True" if attack[i] else "False"},'
                     f'{int(i in (600, 640, 750, 780))}')
    src = tmp_path / 'log.csv'
    src.write_text('\n'.join(lines) + '\n')
    bag, model, report = tmp_path / 'bag', tmp_path / 'model', tmp_path / 'report'
    assert main(['bag', 'from-csv', str(src), '--out', str(bag)]) == 0
    text = capsys.readouterr().out
    assert "labels 'fault_a' + 'anomaly' by name and content" in text
    assert main(['train', 'anomaly', '--bag', str(bag), '--out', str(model),
                 '--arch', 'mlp', '--epochs', '3']) == 0          # (fewer epochs: a test)
    assert f'spec: {bag / "spec.yaml"} (beside the bag' in capsys.readouterr().out
    assert main(['eval', 'anomaly', '--model', str(model), '--bag', str(bag), '--out',
                 str(report)]) == 0
    text = capsys.readouterr().out
    assert 'flagging every point would score F1' in text and 'time flagged:' in text
    metrics = json.loads((report / 'report.json').read_text())['metrics']
    assert [e['kind'] for e in metrics['events']] == ['fault_a', 'anomaly']
    assert metrics['flag_everything']['f1'] == pytest.approx(2 * 70 / (2 * 70 + 830), abs=0.01)
    assert {'normal_s', 'flagged_share', 'flagged_normal_share'} <= set(metrics['time'])


def test_a_pandas_time_index_without_a_name_is_the_time(tmp_path):
    src = tmp_path / 'pandas.csv'          # df.to_csv() of a frame indexed by date-times
    src.write_text(',current,label\n2024-01-01 00:00:00,1.0,0\n2024-01-01 00:00:01,2.0,1\n'
                   '2024-01-01 00:00:02,3.0,0\n')
    table = read_csv_table(src)
    assert "time 'column 1' (date-times" in table.detected and 'left out' not in table.detected
    assert table.columns == ['current'] and table.labels.tolist() == [False, True, False]
