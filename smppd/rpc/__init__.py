"""The daemon's only API: newline-delimited JSON over a Unix socket.

Everything that talks to the daemon -- the HTTP shim, the admin commands -- goes through
this package. Its parts, one concern each:

``wire``      the format (framing, requests, replies, batches, error codes), the line
              writer both sides share, and the two exceptions that travel end to end;
``params``    the declared parameter types a request is checked against before any handler;
``peercred``  who may connect (``SO_PEERCRED`` and the socket file's group);
``server``    ``RpcServer``: accepts, reads, dispatches, answers, owns the socket file;
``client``    ``RpcClient``: one shared pipelined connection, batching, deadlines.

The public names are re-exported here, so ``from smppd.rpc import RpcClient`` keeps working.
"""

from __future__ import annotations

from .client import RpcClient
from .params import ListOf, MapOf, ParamTypes, check_params, compile_spec, conforms
from .peercred import is_allowed, peer_allowed
from .server import BatchHandler, Handler, RpcServer
from .wire import BATCHED, INT_LIMIT, MAX_INFLIGHT, MAX_LINE, RpcError, RpcUnavailable

__all__ = [
    "BATCHED",
    "INT_LIMIT",
    "MAX_INFLIGHT",
    "MAX_LINE",
    "BatchHandler",
    "Handler",
    "ListOf",
    "MapOf",
    "ParamTypes",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "RpcUnavailable",
    "check_params",
    "compile_spec",
    "conforms",
    "is_allowed",
    "peer_allowed",
]
