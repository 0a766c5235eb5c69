"""Typed engine errors.

The engine raises these; exactly one table in the CRI edge (``cri_shim.api.errors``) maps
each class to a gRPC status code. Messages are meant for the operator reading ``crictl``
output: they name the object and say what was wrong.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class NotFound(EngineError):
    """The named object (sandbox, container, image, ...) does not exist."""


class AlreadyExists(EngineError):
    """An object with that name or id already exists."""


class InvalidArgument(EngineError):
    """The request is malformed or names something invalid."""


class FailedPrecondition(EngineError):
    """The object is not in a state that allows the operation (e.g. start a running container)."""


class ResourceExhausted(EngineError):
    """A limit was hit: no free IP left, too many sessions, a layer over the size budget."""


class DeadlineExceeded(EngineError):
    """An operation outlived its own timeout (e.g. a pull that made no progress)."""


class Unavailable(EngineError):
    """A dependency is not reachable right now (registry down, shim gone); retrying may work."""


class PermissionDenied(EngineError):
    """Registry refused the credentials, or policy forbids the operation."""


class Unimplemented(EngineError):
    """The engine does not support this (e.g. a feature the kernel lacks)."""


class Aborted(EngineError):
    """The operation was interrupted by a concurrent one (e.g. a removal racing a start)."""


class SignatureValidationFailed(EngineError):
    """The image policy (containers-policy.json) refused a pulled image: a ``reject`` rule,
    or no signature the rule accepts. The message starts with "SignatureValidationFailed: ",
    kubelet's reason for it (k8s.io/cri-api/pkg/errors), as CRI-O's does."""

    def __init__(self, message: str) -> None:
        super().__init__(f"SignatureValidationFailed: {message}")


class Internal(EngineError):
    """An invariant broke inside the engine; the message says which."""
