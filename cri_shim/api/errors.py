"""THE table from engine exceptions to gRPC status codes (docs/ARCHITECTURE.md §3).

No handler picks a status code by hand: handlers raise (or let the engine raise) typed
errors and the dispatcher maps them here. Anything else is a bug: INTERNAL, with an error
id that is also in the log next to the traceback.
"""

from __future__ import annotations

import grpc

from runtime import errors as e

STATUS_OF: dict[type[e.EngineError], grpc.StatusCode] = {
    e.NotFound: grpc.StatusCode.NOT_FOUND,
    e.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    e.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    e.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    e.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.Unavailable: grpc.StatusCode.UNAVAILABLE,
    e.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    e.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    e.Aborted: grpc.StatusCode.ABORTED,
    e.Internal: grpc.StatusCode.INTERNAL,
    # kubelet's CRI client strips the status only from UNKNOWN errors (cri-client
    # remote_image.go), and kubelet's evalCRIPullErr then matches the message prefix
    # "SignatureValidationFailed" to set the container's waiting reason; CRI-O returns a
    # plain error (UNKNOWN) with that prefix too.
    e.SignatureValidationFailed: grpc.StatusCode.UNKNOWN,
}


def status_of(exc: e.EngineError) -> grpc.StatusCode:
    """The gRPC code of an engine error (the closest base class in the table wins)."""
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN
