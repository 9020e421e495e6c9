"""Network faults between the S3 client and the test server: a TCP proxy that drops connections mid-stream
or goes away (and comes back), and a fake S3 endpoint that rejects every credential."""
from __future__ import annotations

import http.server
import math
import socket
import struct
import threading

__all__ = ["FlakyProxy", "RejectingS3"]


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to an upstream host:port, with faults switched on at run time.

    * ``cut(direction, after, times, outage)``: the next ``times`` connections are dropped once ``after``
      bytes have passed in ``direction`` ("up": client → server, an upload's body; "down": server → client,
      a download's body). ``times=math.inf``: every connection, until ``heal()``. With ``outage`` (seconds,
      ``math.inf`` for good) the endpoint also goes down at that moment, as if the server process died.
    * ``down()``: the endpoint disappears: open connections are dropped and new ones refused; ``up()``
      listens again on the same port, as a restarted server would.
    """

    def __init__(self, upstream: str):
        host, port = upstream.split("://", 1)[-1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._direction, self._after, self._times, self._outage = "", 0, 0.0, 0.0
        self.cuts = 0  # connections reset by `cut`
        self.connections = 0  # connections accepted
        self._listener = None
        self.port = 0
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults -----------------------------------------------------------------------------------------

    def cut(self, direction: str, after: int, times: float = 1, outage: float = 0.0) -> None:
        assert direction in ("up", "down")
        with self._lock:
            self._direction, self._after, self._times, self._outage = direction, after, times, outage

    def heal(self) -> None:
        with self._lock:
            self._times = 0

    def down(self) -> None:
        """Stop listening and reset every open connection (the server process died)."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            listener.close()
        for s in conns:
            _reset(s)

    def up(self) -> None:
        """Listen again (on the same port once one was chosen)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        self.down()

    # -- plumbing ---------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _reset(client), _reset(server)
                    return
                self.connections += 1
                self._conns |= {client, server}
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, "up", pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down", pair), daemon=True).start()

    def _doomed(self, direction: str, sent: int) -> bool:
        """Whether a connection that has carried `sent` bytes in `direction` is dropped now (uses up a cut)."""
        with self._lock:
            if self._times > 0 and direction == self._direction and sent >= self._after:
                self._times -= 1
                self.cuts += 1
                return True
            return False

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, pair) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._doomed(direction, sent + len(data)):
                    dst.sendall(data[: max(0, self._after - sent)])
                    if self._outage:
                        self.down()
                        if self._outage != math.inf:
                            threading.Timer(self._outage, self.up).start()
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in pair:  # one side ended or the fault struck: drop the whole connection
            _reset(s)
        with self._lock:
            self._conns.difference_update(pair)


def _reset(s: socket.socket) -> None:
    """Drop a connection as a crashed peer would: shutdown (which also wakes the other pump thread blocked
    in recv on it; close alone would not), then close with RST (SO_LINGER 0)."""
    for step in (lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: s.shutdown(socket.SHUT_RDWR), s.close):
        try:
            step()
        except OSError:
            pass


class RejectingS3:
    """An S3 endpoint that answers every request with 403 and the given error code (e.g.
    ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``), like AWS or MinIO for wrong credentials."""

    def __init__(self, code: str):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reject(self):
                outer.requests += 1
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>rejected'
                        f'</Message><Resource>{self.path}</Resource><RequestId>1</RequestId></Error>').encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _reject

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
