"""CSV logs from other tools into rosbag2: a real SKAB file and the ways a CSV goes wrong."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from data_paths import shared

from encdec_ros.errors import BagError
from encdec_ros.io.bag import BagSource, read_bag
from encdec_ros.io.csvbag import csv_to_bag
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
    assert table.warnings == ["column 'b' has 1 empty or NaN cells"]
    rec = read_bag(out, SignalSpec.load(out / 'spec.yaml'))
    assert np.isnan(rec.streams['/csv/data'].values[1, 1])


@pytest.mark.parametrize(('text', 'kwargs', 'message'), [
    ('t,a\n0,1\n1,x\n', {}, r"line 3, column 'a': 'x' is not a number"),
    ('t,a\n0,1\n1,2\n', {'label_col': 'anomaly'}, "no column 'anomaly'"),
    ('t,a\n0,1\n1,2\n', {'columns': ['b']}, "no column 'b'"),
    ('t,a\nyesterday,1\n', {}, 'neither a number nor an ISO date-time'),
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
