"""The model directory: ``model.onnx`` plus ``model.yaml``, shared by every capability.

``model.yaml`` is plain YAML (no Python tags, booleans as YAML booleans)::

    format: encdec_ros/model/1
    task: anomaly                      # anomaly | denoise | allocator
    created: '2026-11-23T11:30:00+00:00'
    onnx:
      file: model.onnx
      sha256: 9f2c...
      inputs: [{name: x, shape: [batch, 64, 6]}]
      outputs: [{name: x_hat, shape: [batch, 64, 6]}]
    training: {epochs: 30, ...}       # free figures: losses, command line, versions
    spec: {...}                       # task sections, added freely by each capability
    normalization: {mean: [...], std: [...]}
    threshold: 0.042

Everything the runtime needs travels in this directory; :class:`ModelDir` refuses a
directory that is incomplete, altered, of another format version or of another task, each
time with one sentence that says how to fix it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import yaml

from .errors import ModelDirError

if TYPE_CHECKING:
    from .engine import InferenceEngine

FORMAT = 'encdec_ros/model/1'
TASKS = ('anomaly', 'denoise', 'allocator')
ONNX_NAME = 'model.onnx'
YAML_NAME = 'model.yaml'
RESERVED = ('format', 'task', 'created', 'onnx')
"""Top-level keys written by :func:`save_model_dir` itself; sections may not use them."""
_TRAIN_COMMAND = {
    'anomaly': 'encdec train anomaly',
    'denoise': 'encdec train denoise',
    'allocator': 'encdec train allocator',
}
_NODE_OF = {'anomaly': 'anomaly_detector', 'denoise': 'denoiser', 'allocator': 'allocator'}
_REQUIRED = object()


# --------------------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """Safe YAML with short lists of scalars on one line (normalisation vectors, shapes)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence('tag:yaml.org,2002:seq', data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _plain(value: Any, where: str) -> Any:
    """Turn numpy values, tuples and paths into plain YAML types; refuse anything else."""
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, str):      # a str subclass (torch's version string) as plain str
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelDirError(f'model.yaml key {key!r} under {where} is not a string; '
                                    'use string keys in the sections')
            out[key] = _plain(item, f'{where}.{key}')
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f'{where}[{i}]') for i, item in enumerate(value)]
    raise ModelDirError(f'model.yaml value at {where} is a {type(value).__name__}, which '
                        'plain YAML cannot hold; convert it to numbers, strings, lists or dicts')


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _onnx_io(data: bytes, source: str) -> tuple[list[dict], list[dict]]:
    """Read the input and output names and shapes with onnxruntime (no onnx package)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelDirError(f'onnxruntime {ort.__version__} cannot load {source} '
                            f'({_first_line(err)}); re-export the model with a lower opset '
                            'or upgrade onnxruntime') from err

    def entry(arg: Any) -> dict:
        shape = [d if isinstance(d, int) else (d or None) for d in arg.shape]
        return {'name': arg.name, 'shape': shape}

    return [entry(i) for i in session.get_inputs()], [entry(o) for o in session.get_outputs()]


def _article(word: str) -> str:
    return 'an' if word[:1] in 'aeiou' else 'a'


def _first_line(err: BaseException) -> str:
    from .engine import ort_message

    return ort_message(err)


# --------------------------------------------------------------------------- save


def save_model_dir(path: str | Path, *, onnx_file: str | Path | bytes, task: str,
                   sections: Mapping[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write a model directory: copy the ONNX, hash it, write model.yaml atomically.

    Args:
        path: The directory; created when missing.
        onnx_file: The exported ``.onnx`` file, or its bytes.
        task: 'anomaly', 'denoise' or 'allocator'.
        sections: Further top-level sections (``training``, ``spec``, ``normalization``,
            ``threshold``, ``architecture`` ...); numpy values become plain lists and numbers.
        overwrite: Replace model.onnx and model.yaml in a directory that is not empty.

    Returns:
        The directory path.
    """
    path = Path(path)
    if task not in TASKS:
        raise ModelDirError(f'task {task!r} is not one of {", ".join(TASKS)}; '
                            'pass the capability the model was trained for')
    sections = dict(sections or {})
    clash = [key for key in sections if key in RESERVED]
    if clash:
        raise ModelDirError(f'section name(s) {", ".join(clash)} are written by save_model_dir '
                            'itself; rename the section')
    if path.exists() and not path.is_dir():
        raise ModelDirError(f'{path} exists and is not a directory; choose another output path')
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ModelDirError(f'model directory {path} already exists and is not empty; choose '
                            'another path or pass overwrite=True (--force) to replace it')
    if isinstance(onnx_file, (bytes, bytearray)):
        data = bytes(onnx_file)
        source = 'the given ONNX bytes'
    else:
        source = str(onnx_file)
        try:
            data = Path(onnx_file).read_bytes()
        except OSError as err:
            raise ModelDirError(f'cannot read the ONNX file {onnx_file} ({err.strerror}); '
                                'export the model first') from err
    inputs, outputs = _onnx_io(data, source)
    meta: dict[str, Any] = {
        'format': FORMAT,
        'task': task,
        'created': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
        'onnx': {'file': ONNX_NAME, 'sha256': _sha256(data), 'inputs': inputs,
                 'outputs': outputs},
    }
    for key, value in sections.items():
        meta[key] = _plain(value, key)
    text = yaml.dump(meta, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(path / ONNX_NAME, data)
    _atomic_write(path / YAML_NAME, text.encode('utf-8'))  # last: its presence means complete
    return path


# --------------------------------------------------------------------------- load


class ModelDir:
    """A loaded and verified model directory.

    Attributes:
        path: The directory.
        task: 'anomaly', 'denoise' or 'allocator'.
        meta: The whole model.yaml as a dict.
        onnx_path: The ONNX file.
        sha256: The ONNX file's sha256, as recorded and verified.
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.task: str = meta['task']
        self.onnx_path = path / meta['onnx']['file']
        self.sha256: str = meta['onnx']['sha256']

    @classmethod
    def load(cls, path: str | Path, *, task: str | None = None,
             check_onnx: bool = True) -> 'ModelDir':
        """Load ``path`` and refuse it, with one sentence, unless it is whole and unaltered.

        Args:
            path: The model directory.
            task: The task the caller needs; another task is refused.
            check_onnx: Also load the ONNX with onnxruntime (CPU) and compare its inputs and
                outputs with model.yaml.

        Returns:
            The loaded model directory.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelDirError(f'model directory {path} does not exist; pass the directory '
                                'written by `encdec train` (it holds model.onnx and model.yaml)')
        if not path.is_dir():
            raise ModelDirError(f'{path} is not a directory; pass the model directory that '
                                'holds model.onnx and model.yaml, not a file in it')
        yaml_path = path / YAML_NAME
        if not yaml_path.is_file():
            raise ModelDirError(f'{path} has no {YAML_NAME}; it is not a model directory or its '
                                'export did not finish, so train or export it again')
        meta = _read_yaml(yaml_path)
        fmt = meta.get('format')
        if fmt != FORMAT:
            raise ModelDirError(f'{yaml_path} has format {fmt!r} but this encdec_ros reads '
                                f'{FORMAT!r}; re-export the model with this version')
        found = meta.get('task')
        if found not in TASKS:
            raise ModelDirError(f'{yaml_path} has task {found!r}, not one of '
                                f'{", ".join(TASKS)}; re-export the model')
        if task is not None and found != task:
            node = _NODE_OF.get(task, task)
            command = _TRAIN_COMMAND.get(task, 'encdec train')
            raise ModelDirError(f'{path} is {_article(found)} {found} model; the {node} needs '
                                f'{_article(task)} {task} model, trained with `{command}`')
        onnx_meta = meta.get('onnx')
        if (not isinstance(onnx_meta, dict) or not isinstance(onnx_meta.get('file'), str)
                or not isinstance(onnx_meta.get('sha256'), str)):
            raise ModelDirError(f'{yaml_path} lacks onnx.file or onnx.sha256; re-export the '
                                'model')
        onnx_path = path / onnx_meta['file']
        if not onnx_path.is_file():
            raise ModelDirError(f'{path} has no {onnx_meta["file"]}; copy the whole model '
                                'directory, not only model.yaml')
        data = onnx_path.read_bytes()
        if _sha256(data) != onnx_meta['sha256']:
            raise ModelDirError(f'{onnx_path} does not match the sha256 in {YAML_NAME}: the '
                                'ONNX file was changed after export; re-export the model or '
                                'restore the original file')
        model = cls(path, meta)
        if check_onnx:
            model._check_onnx(data)
        return model

    def _check_onnx(self, data: bytes) -> None:
        inputs, outputs = _onnx_io(data, str(self.onnx_path))
        for kind, have in (('inputs', inputs), ('outputs', outputs)):
            listed = [e.get('name') for e in self.meta['onnx'].get(kind) or []
                      if isinstance(e, dict)]
            names = [e['name'] for e in have]
            if listed and listed != names:
                raise ModelDirError(f'{YAML_NAME} in {self.path} lists the {kind} '
                                    f'{", ".join(map(str, listed))} but the ONNX file has '
                                    f'{", ".join(names)}; re-export the model')

    # ------------------------------------------------------------------ accessors

    def section(self, name: str, default: Any = _REQUIRED) -> Any:
        """Return a top-level section, ``default`` when given and missing.

        ``name`` may be dotted (``'normalization.mean'``) to reach into nested dicts.
        """
        node: Any = self.meta
        for part in name.split('.'):
            if not isinstance(node, dict) or part not in node:
                if default is _REQUIRED:
                    raise ModelDirError(f'{YAML_NAME} in {self.path} has no {name!r}, which '
                                        f'this {self.task} model needs; re-train or re-export '
                                        'it with this version of encdec_ros')
                return default
            node = node[part]
        return node

    def array(self, name: str, *, dtype: Any = np.float32) -> np.ndarray:
        """Return a numeric section (e.g. ``'normalization.mean'``) as a numpy array."""
        value = self.section(name)
        try:
            return np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):
            raise ModelDirError(f'{name!r} in {self.path / YAML_NAME} is not numeric; '
                                're-export the model') from None

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """The ONNX inputs as recorded: ``[{'name', 'shape'}]``."""
        return list(self.meta['onnx'].get('inputs') or [])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The ONNX outputs as recorded: ``[{'name', 'shape'}]``."""
        return list(self.meta['onnx'].get('outputs') or [])

    def engine(self, device: str = 'auto', **kwargs: Any) -> 'InferenceEngine':
        """Open an :class:`~encdec_ros.engine.InferenceEngine` on this model."""
        from .engine import InferenceEngine

        return InferenceEngine(self.onnx_path, device=device, **kwargs)

    def check_spec(self, spec: Any, *, ignore: Iterable[str] = ()) -> None:
        """Refuse a spec that differs from the stored ``spec`` section, naming the first change.

        Args:
            spec: A dict, or an object with ``to_dict()`` (e.g. ``SignalSpec``).
            ignore: Top-level spec keys that may differ (e.g. a description).
        """
        given = spec.to_dict() if hasattr(spec, 'to_dict') else spec
        stored = self.section('spec')
        skip = set(ignore)
        given = {k: v for k, v in dict(given).items() if k not in skip}
        stored = {k: v for k, v in dict(stored).items() if k not in skip}
        diff = first_difference(stored, given)
        if diff is not None:
            where, have, want = diff
            raise ModelDirError(f'the spec differs from the one {self.path} was trained with '
                                f'at {where}: the model has {have}, the given spec has {want}; '
                                'use the model\'s spec (encdec inspect) or train a new model')

    def __repr__(self) -> str:
        return f'ModelDir({str(self.path)!r}, task={self.task!r})'


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = getattr(err, 'problem', None) or _first_line(err)
        mark = getattr(err, 'problem_mark', None)
        at = f' at line {mark.line + 1}' if mark is not None else ''
        raise ModelDirError(f'{path} is not readable YAML ({detail}{at}); restore it from the '
                            'export or re-export the model') from err
    if not isinstance(meta, dict):
        raise ModelDirError(f'{path} does not hold a mapping of sections; restore it from the '
                            'export or re-export the model')
    return meta


def first_difference(stored: Any, given: Any, where: str = 'spec') -> tuple[str, str, str] | None:
    """Return (path, stored value, given value) of the first difference, or None.

    Numbers compare by value (``100 == 100.0``, floats within 1e-9 relative), dict keys in
    the stored order, lists element by element.
    """
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in stored:
            if key not in given:
                return f'{where}.{key}', repr(stored[key]), 'nothing'
            found = first_difference(stored[key], given[key], f'{where}.{key}')
            if found:
                return found
        for key in given:
            if key not in stored:
                return f'{where}.{key}', 'nothing', repr(given[key])
        return None
    if isinstance(stored, (list, tuple)) and isinstance(given, (list, tuple)):
        for i, (a, b) in enumerate(zip(stored, given)):
            found = first_difference(a, b, f'{where}[{i}]')
            if found:
                return found
        if len(stored) != len(given):
            return f'{where}', f'{len(stored)} entries', f'{len(given)} entries'
        return None
    numbers = (int, float)
    if (isinstance(stored, numbers) and isinstance(given, numbers)
            and not isinstance(stored, bool) and not isinstance(given, bool)):
        if stored == given or math.isclose(stored, given, rel_tol=1e-9, abs_tol=0.0):
            return None
        return where, repr(stored), repr(given)
    if stored != given or type(stored) is not type(given):
        return where, repr(stored), repr(given)
    return None
