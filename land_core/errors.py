"""Errors a person can act on.

Every error raised for bad input derives from :class:`LandError`; its message names the file (when
there is one) and what is wrong, so the command line and the app can show it as it is, without a
traceback.
"""

from __future__ import annotations

import os


class LandError(Exception):
    """Base of every error LAND Studio raises for input a person can fix."""


class VolumeError(LandError, ValueError):
    """A volume (array or geometry) is unusable: wrong dimension, NaN values, bad spacing..."""


class ImageFileError(LandError):
    """An image file or DICOM folder cannot be read or written.

    ``path`` is the file or folder, ``problem`` says what is wrong with it in plain words.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(LandError):
    """A checkpoint folder or one of its files is unusable; ``path`` names it, ``problem`` says why."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(LandError, ValueError):
    """A configuration (phantom, model, training) has a value out of range or of the wrong type."""


class MaskError(LandError, ValueError):
    """A condition mask or nodule specification is out of range or does not fit the volume."""


class ManifestError(LandError):
    """A dataset manifest or one of its cases is malformed; ``problems`` lists every bad case."""

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        self.path = os.fspath(path)
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s):\n{listing}")
