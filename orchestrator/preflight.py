"""Checks a sweep must pass before the driver touches the store or starts Ray.

Each check returns None when the input is usable, else one line naming the input and what is
allowed; `natsbench sweep` prints it and exits 2 with nothing written and nothing started.
They cover what sweep-file validation cannot see: the Ray address (its form, and whether
anything answers there, with a short TCP timeout instead of Ray's minutes of retries), GPUs the
built-in local Ray cannot provide, and model names that resolve to no model or to broken files
(the cell runner's `check_model`, which reads headers, never the weights).
"""

from __future__ import annotations

import importlib
import re
import socket
from typing import Any

ADDRESS_CONNECT_TIMEOUT_S = 3.0
ADDRESS_FORMS = "HOST:PORT of the cluster's GCS (e.g. 127.0.0.1:6379), ray://HOST:PORT (Ray Client) or auto"
_HOST_PORT = re.compile(r"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})$")


def check_address(address: str | None, timeout_s: float = ADDRESS_CONNECT_TIMEOUT_S) -> str | None:
    """None if `address` names a Ray cluster that answers (or is None / 'auto'), else one line."""
    if address is None or address == "auto":
        return None
    text = address.strip()
    if re.match(r"^https?://", text):
        return (f"--address {address!r} is a Ray Jobs API (dashboard) address, the form `natsbench submit` "
                f"takes; `natsbench sweep` joins the cluster itself: use {ADDRESS_FORMS}")
    target = text[len("ray://"):] if text.startswith("ray://") else text
    match = _HOST_PORT.match(target)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        return f"malformed --address {address!r}; expected {ADDRESS_FORMS}"
    host, port = match["ip6"] or match["host"], int(match["port"])
    reason = _reachable(host, port, timeout_s)
    if reason:
        return (f"--address {address!r}: nothing answers at {host}:{port} ({reason} within "
                f"{timeout_s:g} s); start the cluster (`ray start --head`) or leave --address out for "
                "the built-in local Ray")
    return None


def _reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None if a TCP connection to host:port opens within `timeout_s`, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        return reason.lower()


def check_jobs_address(address: str, timeout_s: float = ADDRESS_CONNECT_TIMEOUT_S) -> str | None:
    """None if `address` is a Ray Jobs API URL (http[s]://HOST:PORT) that answers, else one line."""
    match = re.match(r"^https?://(?P<hostport>[^/]+)/?$", address.strip())
    if match is None:
        form = "a cluster (GCS) address, the form `natsbench sweep --address` takes" if _HOST_PORT.match(
            address.strip()) else "malformed"
        return (f"--address {address!r} is {form}; `natsbench submit` talks to the Ray Jobs API: "
                "http://HOST:PORT of the cluster's dashboard (e.g. http://127.0.0.1:8265)")
    hostport = _HOST_PORT.match(match["hostport"])
    if hostport is None or not 1 <= int(hostport["port"]) <= 65535:
        return f"malformed --address {address!r}; expected http://HOST:PORT (e.g. http://127.0.0.1:8265)"
    host, port = hostport["ip6"] or hostport["host"], int(hostport["port"])
    reason = _reachable(host, port, timeout_s)
    if reason:
        return (f"--address {address!r}: nothing answers at {host}:{port} ({reason} within {timeout_s:g} s); "
                "start the cluster with its dashboard (`ray start --head --dashboard-host=127.0.0.1`)")
    return None


def local_gpu_count() -> int:
    """GPUs the built-in local Ray would see on this machine."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(spec: Any, address: str | None, workers: int | None = None) -> str | None:
    """None unless the built-in local Ray (no --address) can never give a worker its GPUs."""
    need = float(spec.resources.gpus_per_worker)
    if address is not None or need <= 0:
        return None  # a cluster may have (or add) GPU nodes; its own warning covers the rest
    have = local_gpu_count()
    if need > have:
        return (f"resources.gpus_per_worker = {need:g} cannot be met by the built-in local Ray: this "
                f"machine has {have} GPU{'s' if have != 1 else ''}; allowed here: 0"
                f"{f' to {have}' if have else ''}, or join a cluster with GPUs (--address)")
    return None


def check_models(spec: Any, runner: str) -> str | None:
    """None when the cell runner's `check_model` accepts every model of the sweep (adapters are
    checked by the sweep-file validation already)."""
    module = importlib.import_module(runner)
    check = getattr(module, "check_model", None)
    if check is None:  # a runner without the hook: its cells report their own errors
        return None
    for i, model in enumerate(spec.models):
        try:
            check(model.name)
        except ValueError as exc:
            return f"models[{i}].name: {str(exc).strip().splitlines()[0]}"
    return None
