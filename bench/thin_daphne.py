"""The shared bench's thin pass-through (thin_proxy:app) as the gateway's server runs it, for the
bench's `thin_daphne` target (bench/run.py --servers):

  PYTHONPATH=<fastapi's dir>:../shared/bench UPSTREAM=… GATEWAY_KEY=sk-thin CLIENT=aiohttp \
      .venv/bin/python -m gateway_project.serve --workers 1 -v 0 bench.thin_daphne:app

daphne on uvloop (gateway_project.worker) with the server patches that change how daphne and
Twisted serve HTTP, as gateway_project.asgi applies them, less two that are the gateway's own
application at the server's edge and need its Django settings: `head_refusal` (proxy.gate's door
for /v1, which would refuse thin's key) and `drain_on_shutdown` (settles the gateway's calls).
"""

import sys

from gateway_project import server_patches

GATEWAY_ONLY = frozenset({"head_refusal", "drain_on_shutdown"})

if "daphne.server" not in sys.modules:
    raise RuntimeError("bench.thin_daphne is served by daphne (gateway_project.serve)")
if GATEWAY_ONLY - {patch.name for patch in server_patches.PATCHES}:
    raise RuntimeError(f"bench.thin_daphne: {GATEWAY_ONLY} are no longer all server patches' names")
server_patches.check()
for patch in server_patches.PATCHES:
    if patch.apply is not None and patch.name not in GATEWAY_ONLY:
        patch.apply()

from thin_proxy import app  # noqa: E402  (served with the patches above in place)

__all__ = ["app"]
