"""Exceptions with messages that name the offending file and the problem."""

from __future__ import annotations


class UltraADError(Exception):
    """Base class of every error this package raises on purpose."""


class InputDataError(UltraADError, ValueError):
    """An input file or dataset description is missing, unreadable or inconsistent."""


class WeightsError(UltraADError, RuntimeError):
    """Backbone or checkpoint weights are missing, corrupt or do not match the model."""
