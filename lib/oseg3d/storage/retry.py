"""Retry transient storage failures with exponential backoff, and turn every failure into a StorageError.

Object stores drop connections, throttle (``SlowDown``) and restart; a long pipeline step must ride
that out instead of dying on the first hiccup. Permanent errors (missing key, bad credentials) must
*not* be retried: waiting cannot fix them, so they fail at once with a message saying what to change.
The minio client's own urllib3 retries are kept minimal (see ``s3.py``) so this layer decides.
"""
from __future__ import annotations

import http.client
import logging
import random
import ssl
import time
from typing import Callable, TypeVar

import urllib3.exceptions as u3
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from oseg3d.errors import StorageError

__all__ = ["with_retries", "is_transient", "describe", "TRANSIENT_S3_CODES", "CREDENTIAL_S3_CODES"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_DELAY = 0.2
DEFAULT_MAX_DELAY = 5.0

# S3 error codes that mean "try again later" rather than "this request is wrong".
TRANSIENT_S3_CODES = frozenset({
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted",
    "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum",
})
CREDENTIAL_S3_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
})
CREDENTIAL_FIX = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if you use one)"
ENDPOINT_FIX = "check OSEG3D_S3_ENDPOINT (or AWS_ENDPOINT_URL) and that the server is up and reachable"


def _root_cause(exc: BaseException) -> BaseException:
    # urllib3 wraps the real socket/SSL error in MaxRetryError.reason once its own retries are spent.
    while isinstance(exc, u3.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return exc


def is_transient(exc: BaseException) -> bool:
    """Return True if retrying the same request could succeed.

    Args:
        exc: the exception a storage call raised.

    Returns:
        True for network/timeout errors, throttling and server-side (5xx) failures.
    """
    exc = _root_cause(exc)
    if isinstance(exc, (u3.SSLError, ssl.SSLError)):
        return False  # wrong scheme or certificate: a configuration problem, not a blip
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_S3_CODES
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return getattr(exc, "_code", 0) >= 500 or getattr(exc, "_code", 0) == 429
    # Connection refused/reset, timeouts, a body cut short (IncompleteRead), urllib3 giving up.
    return isinstance(exc, (u3.ProtocolError, u3.TimeoutError, u3.IncompleteRead, u3.MaxRetryError,
                            u3.ResponseError, http.client.HTTPException, ConnectionError, TimeoutError))


def describe(exc: BaseException, uri: str, what: str) -> StorageError:
    """Translate a failed storage call into a StorageError that says what to fix.

    Args:
        exc: the exception raised by the call.
        uri: the location the call worked on (named first in the message).
        what: a few words on the operation, e.g. ``"GET"``.

    Returns:
        The StorageError to raise (the caller chains ``exc`` as its cause).
    """
    exc = _root_cause(exc)
    if isinstance(exc, S3Error):
        code = exc.code or "unknown"
        if code in ("NoSuchKey", "NotFound"):
            return StorageError(uri, f"{what}: object does not exist",
                                "check the URI (list its prefix to see what is there)")
        if code == "NoSuchBucket":
            return StorageError(uri, f"{what}: bucket does not exist",
                                "create the bucket or fix the bucket name in the URI")
        if code in CREDENTIAL_S3_CODES:
            return StorageError(uri, f"{what}: credentials rejected ({code})", CREDENTIAL_FIX)
        if code == "AccessDenied":
            return StorageError(uri, f"{what}: access denied",
                                f"{CREDENTIAL_FIX}; the key needs permission on this bucket")
        return StorageError(uri, f"{what}: S3 error {code}: {exc.message}", "see the S3 error code above")
    if isinstance(exc, (u3.SSLError, ssl.SSLError)):
        return StorageError(uri, f"{what}: TLS handshake failed ({exc})",
                            "if the server speaks plain HTTP, write OSEG3D_S3_ENDPOINT as http://host:port "
                            "or set OSEG3D_S3_SECURE=0; otherwise check its certificate")
    if isinstance(exc, MinioException):
        return StorageError(uri, f"{what}: {type(exc).__name__}: {exc}", ENDPOINT_FIX)
    return StorageError(uri, f"{what}: {type(exc).__name__}: {exc}", "check the path, permissions and free space")


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    uri: str = "",
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = DEFAULT_BASE_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    fix: str = ENDPOINT_FIX,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, retrying only transient errors with jittered exponential backoff.

    ``fn`` must be safe to repeat: it redoes the whole operation (re-opens the file, re-creates the
    temp file) on every call. StorageErrors it raises itself (e.g. a checksum mismatch) pass through
    untouched and are not retried; other non-storage exceptions (bugs, a failing user stream) propagate
    unchanged.

    Args:
        fn: the operation, with no arguments.
        what: a few words on the operation for messages and logs, e.g. ``"PUT"``.
        uri: the location it works on (named first in the error message).
        attempts: total tries, at least 1.
        base_delay: delay before the 2nd try in seconds; doubles each time.
        max_delay: cap on a single delay in seconds.
        fix: the fix to print when transient errors outlast the attempts.
        sleep: the sleep function (tests may pass a no-op).

    Returns:
        Whatever ``fn`` returns.

    Raises:
        StorageError: a permanent error, or transient errors on every attempt.
    """
    attempts = max(1, int(attempts))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except StorageError:
            raise
        except (MinioException, u3.HTTPError, http.client.HTTPException, OSError) as exc:
            if not is_transient(exc):
                raise describe(exc, uri, what) from exc
            if attempt == attempts:
                cause = _root_cause(exc)
                raise StorageError(
                    uri, f"{what} failed {attempts} times, last error {type(cause).__name__}: {cause}", fix
                ) from exc
            # "Equal jitter": at least half the exponential delay, so many workers don't retry in lockstep.
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            delay = delay / 2 + random.uniform(0, delay / 2)
            log.warning("%s %s: %s: %s; retry %d/%d in %.2fs", what, uri, type(exc).__name__, exc,
                        attempt, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")
