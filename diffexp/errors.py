"""Errors the user can fix: ``run.py`` prints them as one clean message and exits with status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """Settings (or an output directory) that ``run`` cannot use; the message lists every problem."""

    def __init__(self, problems: list[str], title: str = "invalid configuration") -> None:
        self.problems = list(dict.fromkeys(problems))  # task.sigma_y is also checked as task.operator.sigma_y
        super().__init__(f"{title}:\n  " + "\n  ".join(self.problems))
