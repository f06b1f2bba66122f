"""Typed errors, each with the process exit code the CLI returns for it.

The table is the contract documented in README.md ("Exit codes").
"""

from __future__ import annotations


class ForgetctlError(Exception):
    """Base of every error the CLI turns into one clear line and an exit code."""

    exit_code = 1


class BadInput(ForgetctlError):
    """Malformed or invalid input: nothing was written."""

    exit_code = 2


class NotFound(ForgetctlError):
    """A request, version, policy or model that does not exist."""

    exit_code = 3


class InvalidState(ForgetctlError):
    """The operation is not allowed in the object's current state."""

    exit_code = 4


class LedgerCorrupt(ForgetctlError):
    """The event hash chain does not verify."""

    exit_code = 5


class PromotionRefused(ForgetctlError):
    """The version has not passed the checks its policies require."""

    exit_code = 6


class VerificationFailed(ForgetctlError):
    """A verification ran and the candidate failed it."""

    exit_code = 7


class Locked(ForgetctlError):
    """Another `forgetctl run` holds the lock."""

    exit_code = 8


class ModelMissing(ForgetctlError):
    """The base model is not in the home; `forgetctl model pull` fetches it."""

    exit_code = 9


# `forgetctl run` finished its work, but requests remain past their deadline.
EXIT_OVERDUE = 10


# `forgetctl run` finished its work, but some requests ended `failed` (a human must look).
EXIT_FAILED = 11
