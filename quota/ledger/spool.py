"""Settlement that survives a database hiccup.

If the transaction that writes a call record fails (PostgreSQL restarting, a failover, a full
connection pool), the settlement is pushed onto a Redis list instead of being lost; a periodic
task replays it once the database is back. Without Redis (the laptop defaults), or while Redis is
unreachable, the fallback is a local JSON-lines file in GATEWAY_SPOOL_DIR: it and its directory
are created by the first settlement that needs them, and otherwise only looked for (a read-only
application directory is no problem while Redis answers). Replay is idempotent: a payload whose
record already exists is dropped.
"""

import contextlib
import datetime as dt
import fcntl
import json
import logging
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection

from ..billing.bill import Bill
from ..models import CallRecord, PriceVersion
from ..pricing import Usage
from .statements import Admission
from .sweep import settlement_from_json
from .sync import settle

logger = logging.getLogger(__name__)
SPOOL_KEY = "gw:settle-spool"
PROCESSING_KEY = "gw:settle-spool:processing"


def _plain(value: object) -> object:
    if hasattr(value, "pk"):
        return str(value.pk)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


def settle_payload(*, admission: Admission | None, record: dict, usage: Usage, price: PriceVersion | None) -> dict:
    fields = {}
    for name, value in record.items():
        key = f"{name}_id" if hasattr(value, "pk") else name
        fields[key] = _plain(value)
    return {
        "spool_id": str(uuid.uuid4()),
        "admission": None
        if admission is None
        else [
            str(admission.reservation_id),
            admission.counter_id,
            admission.tokens,
            str(admission.cost),
            list(admission.groups),
            list(admission.held),
        ],
        "record": fields,
        "usage": {k: _plain(v) for k, v in usage.__dict__.items()},
        "price_id": None if price is None else price.pk,
    }


def _from_payload(payload: dict) -> dict:
    adm = payload["admission"]
    admission = None
    if adm is not None:  # a payload spooled before group budgets has four fields
        groups, held = (tuple(adm[4]), tuple(adm[5])) if len(adm) > 5 else ((), ())
        admission = Admission(uuid.UUID(adm[0]), adm[1], adm[2], Decimal(adm[3]), groups, held)
    record, usage, price = settlement_from_json(
        record=payload["record"], usage=payload["usage"], price_id=payload["price_id"]
    )
    return {"admission": admission, "record": record, "usage": usage, "price": price}


def _redis() -> redis.Redis | None:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2) if settings.REDIS_URL else None


def _file() -> Path:
    return Path(settings.GATEWAY_SPOOL_FILE)


def spool_push(payload: dict) -> None:
    line = json.dumps(payload)
    client = _redis()
    if client is not None:
        try:
            client.rpush(SPOOL_KEY, line)
            return
        except redis.RedisError:
            logger.exception("settlement spool: Redis unavailable, writing to the local file")
    path = _file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a replay in another process (a shared volume) rewrites the file
        fh.write(line + "\n")


def call_settle_durable(
    *,
    admission: Admission | None,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: datetime | None = None,
    billed: Bill | None = None,
) -> CallRecord | None:
    """settle; if the database fails, once more on a new connection (the one that failed may have
    been terminated, or the database restarted), then a spooled settlement. Returns the record or
    None. Repeating is safe: a settlement with a reservation writes only while it holds it, and one
    without is looked for first. Inside the caller's transaction there is no second try. `billed`:
    the call's bill when its caller made it (a spooled settlement is priced again at its replay,
    at the same price version)."""
    arguments: dict[str, Any] = {
        "admission": admission,
        "record": record,
        "usage": usage,
        "price": price,
        "now": now,
        "billed": billed,
    }
    try:
        return settle(**arguments)
    except DatabaseError:
        if connection.in_atomic_block:
            _spooled(**arguments)
            return None
        logger.warning("settlement of %s failed; retrying on a new connection", record.get("request_id"))
        connection.close()
    try:
        if admission is None and _recorded(record["request_id"], record["started_at"]):
            return None
        return settle(**arguments)
    except DatabaseError:
        connection.close()
        _spooled(**arguments)
        return None


def _spooled(
    *,
    admission: Admission | None,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: datetime | None,
    billed: Bill | None,
) -> None:
    logger.exception("settlement failed; spooling request %s for replay", record.get("request_id"))
    spool_push(settle_payload(admission=admission, record=record, usage=usage, price=price))


def _recorded(request_id: str, started_at: dt.datetime) -> bool:
    """Whether a settlement of this call (its request id and start) already wrote its record."""
    return CallRecord.objects.filter(request_id=request_id, started_at=started_at).exists()


def call_settle_once(
    *,
    admission: Admission | None,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: datetime | None = None,
    billed: Bill | None = None,
) -> CallRecord | None:
    """call_settle_durable after a settlement attempt whose outcome is unknown (its connection
    failed, perhaps after the commit): nothing if that attempt's record exists. If the database
    cannot tell, the settlement is written or spooled as usual (a spooled duplicate is dropped by
    the replay; only a database that fails the check and then takes the write could double it)."""
    try:
        if _recorded(record["request_id"], record["started_at"]):
            return None
    except DatabaseError:
        logger.warning("cannot check whether %s was recorded; settling durably", record["request_id"])
    return call_settle_durable(admission=admission, record=record, usage=usage, price=price, now=now, billed=billed)


def _replay_one(payload: dict) -> None:
    rec = payload["record"]
    started = dt.datetime.fromisoformat(rec["started_at"])
    if _recorded(rec["request_id"], started):
        return  # already settled by an earlier replay that died before acknowledging
    settle(**_from_payload(payload))


def spool_replay(*, limit: int = 1000) -> int:
    """Replays spooled settlements; stops at the first database error (still down)."""
    replayed = 0
    client = _redis()
    if client is not None:
        lock = client.lock("gw:settle-spool:lock", timeout=300, blocking=False)
        if not lock.acquire():
            return 0  # another replayer is at work
        try:
            # Whatever sits in PROCESSING belongs to a replayer that died: put it back first.
            while client.lmove(PROCESSING_KEY, SPOOL_KEY, "RIGHT", "LEFT") is not None:
                pass
            replayed += _replay_redis(client, limit)
        finally:
            lock.release()
    return replayed + _replay_file()


def _replay_redis(client: redis.Redis, limit: int) -> int:
    replayed = 0
    for _ in range(limit):
        raw = client.lmove(SPOOL_KEY, PROCESSING_KEY, "LEFT", "RIGHT")
        if raw is None:
            break
        try:
            _replay_one(json.loads(raw))
        except DatabaseError:
            client.lmove(PROCESSING_KEY, SPOOL_KEY, "RIGHT", "LEFT")
            return replayed
        client.lrem(PROCESSING_KEY, 1, raw)  # type: ignore[arg-type]  # bytes, as LMOVE gave them
        replayed += 1
    return replayed


def _replay_file() -> int:
    """Replays the local file under its lock (processes sharing the directory append meanwhile)."""
    path = _file()
    if not path.exists() or not path.stat().st_size:
        return 0
    with path.open("r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        pending = [json.loads(line) for line in fh.read().splitlines() if line.strip()]
        done = 0
        for payload in pending:
            try:
                _replay_one(payload)
            except DatabaseError:
                break
            done += 1
        if done:
            fh.seek(0)
            fh.write("".join(json.dumps(p) + "\n" for p in pending[done:]))
            fh.truncate()
    return done


def spool_depth() -> int:
    client = _redis()
    depth = 0
    if client is not None:
        with contextlib.suppress(redis.RedisError):
            depth += client.llen(SPOOL_KEY) + client.llen(PROCESSING_KEY)
    path = _file()
    if path.exists():
        depth += sum(1 for line in path.read_text().splitlines() if line.strip())
    return depth
