"""The S3 client, configured only from the environment and cached per process.

Environment (nothing is hard-coded, credentials never appear in code or logs):

* ``OSEG3D_S3_ENDPOINT`` (fallback ``AWS_ENDPOINT_URL``): ``http://host:port`` (plain HTTP),
  ``https://host:port`` (TLS) or bare ``host:port`` (TLS unless ``OSEG3D_S3_SECURE=0``).
* ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``.
* ``AWS_REGION`` (default ``us-east-1``); setting it avoids a bucket-location round trip.

One client per (process, endpoint, credentials) is reused across threads: minio clients are
thread-safe and share a connection pool. The cache is keyed on ``os.getpid()`` because a pool's
sockets must not be shared with a forked child (DataLoader workers, multiprocessing).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import certifi
import urllib3
from minio import Minio

from oseg3d.errors import StorageError

__all__ = ["S3Config", "config_from_env", "get_client", "clear_client_cache", "ENDPOINT_VARS"]

ENDPOINT_VARS = ("OSEG3D_S3_ENDPOINT", "AWS_ENDPOINT_URL")
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
# Enough connections for transfer.py's worker threads (default 8) plus some slack.
POOL_MAXSIZE = 32


@dataclass(frozen=True)
class S3Config:
    """Where and as whom to talk S3. ``repr`` hides the secret so configs can be logged safely."""

    endpoint: str  # host[:port], no scheme
    secure: bool
    access_key: str
    secret_key: str
    session_token: str | None
    region: str

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"S3Config({scheme}://{self.endpoint}, access_key={self.access_key!r}, region={self.region!r})"

    @property
    def url(self) -> str:
        """The endpoint as a URL, for messages."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


def _parse_endpoint(raw: str, uri: str) -> tuple[str, bool]:
    """Split an endpoint setting into (host[:port], secure)."""
    raw = raw.strip().rstrip("/")
    if raw.startswith("http://"):
        host, secure = raw[len("http://"):], False
    elif raw.startswith("https://"):
        host, secure = raw[len("https://"):], True
    else:
        host = raw
        secure = os.environ.get("OSEG3D_S3_SECURE", "1").strip().lower() not in ("0", "false", "no", "off")
    if not host or "/" in host:
        raise StorageError(uri, f"S3 endpoint {raw!r} is not host[:port] (a path is not supported)",
                           "set OSEG3D_S3_ENDPOINT to http://host:port or https://host:port")
    return host, secure


def config_from_env(uri: str = "") -> S3Config:
    """Read the S3 configuration from the environment.

    Args:
        uri: the URI being accessed, named in the error if something is missing.

    Returns:
        The configuration.

    Raises:
        StorageError: no endpoint or incomplete credentials; the message names the variables to set.
    """
    raw = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v, "").strip()), "")
    if not raw:
        raise StorageError(uri or "s3://", "no S3 endpoint configured",
                           "set OSEG3D_S3_ENDPOINT (or AWS_ENDPOINT_URL) to http(s)://host:port")
    endpoint, secure = _parse_endpoint(raw, uri or "s3://")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access_key or not secret_key:
        missing = [n for n, v in (("AWS_ACCESS_KEY_ID", access_key), ("AWS_SECRET_ACCESS_KEY", secret_key)) if not v]
        raise StorageError(uri or "s3://", f"S3 credentials missing ({', '.join(missing)} not set)",
                           "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return S3Config(
        endpoint=endpoint,
        secure=secure,
        access_key=access_key,
        secret_key=secret_key,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        region=os.environ.get("AWS_REGION") or "us-east-1",
    )


def _http_client() -> urllib3.PoolManager:
    """A pool with explicit timeouts and almost no retries of its own: ``retry.py`` owns retrying."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=POOL_MAXSIZE,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        # One quick connect retry absorbs a stale pooled socket; reads are never retried here because
        # a half-sent PUT/POST must be redone from the start by our layer.
        retries=urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, backoff_factor=0),
    )


_lock = threading.Lock()
_clients: dict[tuple, Minio] = {}
_clients_pid = os.getpid()


def get_client(uri: str = "", config: S3Config | None = None) -> Minio:
    """Return the cached minio client for the current environment (created on first use).

    Args:
        uri: the URI being accessed, for error messages.
        config: explicit configuration; default: :func:`config_from_env`.

    Returns:
        A thread-safe minio client.

    Raises:
        StorageError: the environment lacks the endpoint or credentials.
    """
    global _clients_pid
    cfg = config or config_from_env(uri)
    key = (cfg.endpoint, cfg.secure, cfg.access_key, cfg.secret_key, cfg.session_token, cfg.region)
    with _lock:
        if _clients_pid != os.getpid():
            # Forked child: drop the parent's clients without closing them (their sockets belong to it).
            _clients.clear()
            _clients_pid = os.getpid()
        client = _clients.get(key)
        if client is None:
            client = Minio(cfg.endpoint, access_key=cfg.access_key, secret_key=cfg.secret_key,
                           session_token=cfg.session_token, secure=cfg.secure, region=cfg.region,
                           http_client=_http_client())
            _clients[key] = client
        return client


def clear_client_cache() -> None:
    """Forget all cached clients (after changing the environment in tests or long-lived processes)."""
    with _lock:
        _clients.clear()
