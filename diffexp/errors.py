"""Every error diffexp raises for the user: ``ConfigError`` and its kinds are things the user can fix (``run.py``
prints them as one clean message and exits with status 2); ``SamplingDivergedError`` ends a run as failed with its
cause; ``NotASweepError`` is the sweep report's refusal of a folder that is not a multirun."""

from __future__ import annotations


class ConfigError(ValueError):
    """Settings (or an output directory) that ``run`` cannot use; the message lists every problem."""

    def __init__(self, problems: list[str], title: str = "invalid configuration") -> None:
        self.problems = list(dict.fromkeys(problems))  # task.sigma_y is also checked as task.operator.sigma_y
        super().__init__(f"{title}:\n  " + "\n  ".join(self.problems))


class ModelUnavailableError(ConfigError, RuntimeError):
    """A hub model that is neither a local folder nor cached, while the hub is unreachable: the user fixes it
    (a ``ConfigError``: ``run.py`` prints it without a traceback and exits with status 2)."""


class CheckpointMismatchError(ConfigError):
    """A checkpoint's keys or shapes do not fit the requested architecture (a user error: ``run.py`` prints
    the listed problems without a traceback)."""


class DataError(ConfigError):
    """Input images that cannot be used (missing, unreadable, too few): the user fixes the folder or
    ``num_images``."""


class UnsafeFileError(ConfigError):
    """A file refused because reading it would need unpickling arbitrary Python objects (code): nothing from it
    was run. A user error: ``run.py`` prints the message, with what to do instead, without a traceback."""


class UnsupportedModelError(ConfigError):
    """A model (its scheduler class or settings, or its UNet against its ``sample_size``) that diffexp would read
    wrongly: refused at load time, before any compute, naming each key, its value and what is allowed."""


class RunDirError(ConfigError):
    """The run directory could not be written while the run went on: the disk is full, or the directory was
    deleted or made unwritable mid-run. The user fixes it on disk (``run.py`` prints it without a traceback)."""


class SamplingDivergedError(FloatingPointError):
    """NaN or Inf appeared in x_t or x̂0 during sampling."""


class NotASweepError(ValueError):
    """The directory is not a Hydra multirun directory (or holds no job yet)."""
