"""Errors that reach a user as one sentence, never as a traceback.

Every mistake a user can make (a wrong path, a typo in a spec, a model directory that does
not match) raises a subclass of :class:`EncdecError` whose message names what is wrong and
how to fix it. The command line and the nodes catch :class:`EncdecError` at the top and
print only its message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EncdecError(Exception):
    """A user-facing error whose message is one clear sentence."""


class SpecError(EncdecError):
    """The signal spec is invalid or does not fit the data or the message types."""


class BagError(EncdecError):
    """A bag cannot be read or written as asked."""


class LabelError(EncdecError):
    """A label file or label topic is malformed."""


class ModelDirError(EncdecError):
    """A model directory is missing, incomplete, altered or of the wrong kind."""


class EngineError(EncdecError):
    """The inference engine cannot run the model on the requested device."""


class ConfigError(EncdecError):
    """A configuration file or command-line option has an invalid value."""


class OutputError(EncdecError):
    """An output path (model, report or bag directory, report file) cannot be created or written."""
