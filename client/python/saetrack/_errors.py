"""Exceptions of the saetrack client: one per gRPC status code."""

from typing import Dict, Optional, Type

import grpc


class Error(Exception):
    """A failed call: the gRPC status code and the coordinator's message.

    Attributes:
      code: the grpc.StatusCode, e.g. grpc.StatusCode.NOT_FOUND.
      message: the message, which names the job, layer, feature or field.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(Error):
    """A bad request, whatever the state (the message names the field)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(Error):
    """An unknown job, layer, feature or file."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(Error):
    """The request id was used before with a different spec."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(Error):
    """The wrong state, e.g. cancelling a finished job, or asking for the
    analysis summary of a job still running."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(Error):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(Error):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(Error):
    """The coordinator cannot be reached or is shutting down; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(Error):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(Error):
    """No token, or one the coordinator does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(Error):
    """The token's role does not allow the call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(Error):
    code = grpc.StatusCode.UNIMPLEMENTED


class DataLoss(Error):
    """Corrupt or incomplete data, e.g. an export whose checksum differs."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(Error):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: Dict[grpc.StatusCode, Type[Error]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
                Aborted, ResourceExhausted, Unavailable, DeadlineExceeded,
                Unauthenticated, PermissionDenied, Unimplemented, DataLoss,
                Internal)
}


def error_for(code: grpc.StatusCode, message: str) -> Error:
    """The Error subclass of `code` (Error itself for codes without one)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return Error(message, code)
    return cls(message)


def from_rpc_error(error: grpc.RpcError) -> Error:
    """Turns a grpc.RpcError (a failed call) into an Error."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return error_for(code, details or "")
