"""Errors about preference data: bad labels, segments, spaces, values and files (all ``ValueError`` subclasses).

Their own module because both the pairs (``rewardmodels.preferences``) and the segments they are cut into
(``rewardmodels.segments``) raise them, and ``preferences`` builds on ``segments``. Import them from either module or
from ``rewardmodels``.
"""

from __future__ import annotations

__all__ = [
    "EmptyDatasetError",
    "LabelValueError",
    "NonFiniteValueError",
    "PreferenceDataError",
    "PreferenceFileError",
    "SegmentShapeError",
    "SpaceMismatchError",
]


class PreferenceDataError(ValueError):
    """Base class of every error about preference data (all are ``ValueError`` subclasses)."""


class LabelValueError(PreferenceDataError):
    """A label outside {0, 0.5, 1, NaN}."""


class SegmentShapeError(PreferenceDataError):
    """Segments of mismatched or malformed shapes (a vs b, against T, or padding that is not at the end)."""


class SpaceMismatchError(PreferenceDataError):
    """Segments that do not match each other's dtypes or the declared observation/action spaces."""


class NonFiniteValueError(PreferenceDataError):
    """NaN or inf in observations, actions or true rewards."""


class EmptyDatasetError(PreferenceDataError):
    """An operation that needs labelled pairs got none."""


class PreferenceFileError(PreferenceDataError):
    """A preference file that cannot be read: corrupted, truncated, or not in this format."""
