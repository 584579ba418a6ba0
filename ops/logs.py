"""Log formatters: `json` (one object per line, for a log shipper) and `text` (for a terminal).

A record may carry `gateway_fields` (a flat dict of plain values): the per-call line of
ops.observe, daphne's access log (JsonAccessLog). Both formatters print those fields; nothing else
is added to a record."""

import datetime as dt
import json
import logging

from daphne.access import AccessLogGenerator

access_logger = logging.getLogger("daphne.access")
# json.dumps with options builds a new encoder per call; one encoder made once writes the same text.
_encode_line = json.JSONEncoder(default=str, separators=(",", ":")).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "gateway_fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode_line(line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "gateway_fields", None)
        if fields:  # a list, not a generator: join makes one anyway (half the time for a call line's 17 fields)
            text += " " + " ".join([f"{k}={v}" for k, v in fields.items() if v is not None and v != ""])
        return text


class JsonAccessLog(AccessLogGenerator):
    """daphne's access log as records of the `daphne.access` logger (so JSON with GATEWAY_LOG_FORMAT=json)
    instead of NCSA-style lines written straight to stdout."""

    def write_entry(
        self,
        host: str,
        date: dt.datetime,
        request: str,
        status: int | None = None,
        length: int | None = None,
        ident: str | None = None,
        user: str | None = None,
    ) -> None:
        fields = {"client": host, "request": request, "status": status, "bytes": length}
        access_logger.info("%s %s", request, status or "-", extra={"gateway_fields": fields})
