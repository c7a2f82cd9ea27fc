"""The proxy's refusals to gRPC callers: statuses, percent-encoded messages, Trailers-Only responses."""

from __future__ import annotations

import pytest

from ztproxy.errors import (
    AccessDenied,
    AuthenticationRequired,
    BadRequest,
    InvalidToken,
    PayloadTooLarge,
    RouteNotFound,
    SessionStoreUnavailable,
    StepUpRequired,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ztproxy.pages.grpc import GrpcStatus, grpc_message, grpc_refusal, grpc_status, is_grpc


@pytest.mark.parametrize(("error", "status"), [
    (AuthenticationRequired(), GrpcStatus.UNAUTHENTICATED),
    (InvalidToken(), GrpcStatus.UNAUTHENTICATED),
    (StepUpRequired(), GrpcStatus.UNAUTHENTICATED),
    (AccessDenied(), GrpcStatus.PERMISSION_DENIED),
    (UpstreamUnavailable(), GrpcStatus.UNAVAILABLE),
    (SessionStoreUnavailable(), GrpcStatus.UNAVAILABLE),
    (UpstreamTimeout(), GrpcStatus.DEADLINE_EXCEEDED),
    (PayloadTooLarge(), GrpcStatus.RESOURCE_EXHAUSTED),
    (RouteNotFound(), GrpcStatus.UNIMPLEMENTED),
    (BadRequest(), GrpcStatus.INTERNAL),
])
def test_statuses(error: Exception, status: GrpcStatus) -> None:
    assert grpc_status(error) is status  # type: ignore[arg-type]


def test_messages_are_percent_encoded() -> None:
    assert grpc_message("plain words: 100 ok") == "plain words: 100 ok"
    assert grpc_message("50% of ünïcode\r\n") == "50%25 of %C3%BCn%C3%AFcode%0D%0A"


def test_content_types() -> None:
    assert is_grpc("application/grpc") and is_grpc("application/grpc+proto") and is_grpc("Application/GRPC; x=1")
    assert not is_grpc("application/grpc-web") and not is_grpc("application/json") and not is_grpc("")


def test_a_refusal_is_trailers_only_with_the_challenge() -> None:
    response = grpc_refusal(InvalidToken("The token expired.", headers=(("WWW-Authenticate", "Bearer x"),)),
                            request_id="abc")
    assert response.status == 200 and response.body is None
    assert response.headers["Content-Type"] == "application/grpc"
    assert response.headers["grpc-status"] == "16" and response.headers["grpc-message"] == "The token expired."
    assert response.headers["WWW-Authenticate"] == "Bearer x" and response.headers["X-Request-Id"] == "abc"
