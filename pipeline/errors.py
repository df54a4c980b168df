"""Errors that carry a one-line reason an imaging team can act on.

Everything the pipeline refuses to process raises a subclass of `PipelineError`;
the CLI prints `str(err)` and exits non-zero, never a traceback.
"""


class PipelineError(Exception):
    """Base class: a study that cannot be processed, with a human-readable reason."""


class StudyInputError(PipelineError):
    """The input study is unusable as given (missing series, bad geometry, ...)."""


class SUVInputError(StudyInputError):
    """An SUV input attribute is missing or impossible; `attribute` names it."""

    def __init__(self, attribute: str, message: str):
        self.attribute = attribute
        self.detail = message
        super().__init__(f"{attribute}: {message}")

    def __reduce__(self):
        # Two-argument constructor: tell pickle how to rebuild it (worker subprocesses).
        return (type(self), (self.attribute, self.detail))


class GeometryError(StudyInputError):
    """Slices that do not form a regular volume (gaps, tilt, uneven spacing)."""


class SettingsError(PipelineError):
    """A config file or pipeline setting that cannot be used; the message names the file and the key."""
