"""The run's log file handler (``hydra.job_logging.handlers.file``), tolerant of an unwritable run directory.

Hydra opens the log file before the job starts; with the stock ``FileHandler`` an unwritable run directory
ends in "Unable to configure handler 'file'" and no hint. This handler only warns on stderr, so that ``run``
can reach its own output-directory check and name the directory that cannot be written.
"""

from __future__ import annotations

import logging
import sys


class RunLogFile(logging.FileHandler):
    """A ``logging.FileHandler`` that drops records (after one warning) when its file cannot be opened."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = False) -> None:
        self.unusable: str | None = None
        try:
            super().__init__(filename, mode, encoding, delay)
        except OSError as err:
            logging.Handler.__init__(self)
            self.baseFilename, self.mode, self.encoding, self.stream = filename, mode, encoding, None
            self.unusable = f"{filename}: {err.strerror}"
            print(f"[diffexp] cannot write the run's log file {self.unusable}", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if self.unusable is None:
            super().emit(record)
