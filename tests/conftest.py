"""Session-wide hooks.

``SMPPD_LEAK_CAPTURE=DIR`` (set by tests/test_log_leaks.py for a pytest run of its own) sends
every log line of the run, ours and the libraries', through the production set-up
(``logs.configure``: JSON, redaction, library routing) into ``DIR/log.jsonl``, and writes
``DIR/witness.json``: every handler key, portal secret, number and text the run's simulated
portals and rigs used, so the caller can look for them in the lines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_CAPTURE = os.environ.get("SMPPD_LEAK_CAPTURE")
_witness: dict[str, set[str]] = {"secrets": set(), "numbers": set(), "texts": set()}


def _record_rigs() -> None:
    from smppd import demo
    from smppd.sims.bitrix24 import SimulatedPortal

    create = SimulatedPortal.create_message

    def create_message(self: SimulatedPortal, code: str, to: str, text: str, **kw: Any) -> Any:
        _witness["numbers"].add(to)
        _witness["texts"].add(text)
        _witness["secrets"].update({self.access_token, self.refresh_token, self.application_token,
                                    self.client_secret})
        return create(self, code, to, text, **kw)

    SimulatedPortal.create_message = create_message  # type: ignore[method-assign]
    start_rig = demo.start_rig

    async def recorded_start_rig(*args: Any, **kw: Any) -> Any:
        rig = await start_rig(*args, **kw)
        _witness["secrets"].add(rig.config.shim.handler_key)
        return rig

    demo.start_rig = recorded_start_rig  # type: ignore[assignment]


def pytest_configure(config: Any) -> None:
    if not _CAPTURE:
        return
    from smppd import logs

    out = open(Path(_CAPTURE) / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 -- open for the run
    logs.configure(json=True, cache=False, file=out)
    _record_rigs()


def pytest_unconfigure(config: Any) -> None:
    if _CAPTURE:
        (Path(_CAPTURE) / "witness.json").write_text(json.dumps({k: sorted(v) for k, v in _witness.items()}))
