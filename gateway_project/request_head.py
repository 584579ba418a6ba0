"""A request's head read in one pass when all of it came in one read (server patch `head_in_one_pass`).

Twisted's HTTPChannel reads a request line by line: LineReceiver splits its buffer at each CRLF
(copying the rest each time) and calls lineReceived per line, which hands each header line on to
headerReceived one line late (to join obsolete folded lines), which splits it, canonicalises the
name, checks the value, looks for a length and adds it to the request's Headers. The checks are
what keeps the server safe from request smuggling and oversized heads, so they are kept whole:

- `whole_head` decides, without changing anything, whether a read holds a head that Twisted's
  own steps would take in full without refusing it: the channel between requests with nothing
  buffered, the head's end in this read, the request line in Twisted's form (a token, a target
  of bytes 0x21-0xB0, HTTP/1.0 or 1.1), no bare CR or LF and no NUL anywhere in it, each header
  a token name with a colon (no folded line), the head within the channel's size and header
  limits, at most one Content-Length, all digits, and no Transfer-Encoding;
- only then does `take` make what Twisted's lines would have made (the request from the
  channel's factory, its request line, its headers in order, the length's decoder, the counters)
  and go on as the last line would: `allHeadersReceived` (cookies, persistence, the request's
  gotLength, where the gateway's door runs, `100 Continue`), then the body or the whole request,
  and what follows the head in the read goes to LineReceiver's own loop.

Anything else (a head split across reads at any byte, a read while a request is handled or the
connection closes, a pipelined request replayed while the channel is busy, a Transfer-Encoding,
any input Twisted refuses or treats specially) goes to Twisted's dataReceived untouched, which
then answers and refuses it as it always did.
"""

import functools
import re
from typing import Any

from twisted.protocols.basic import LineReceiver
from twisted.web._abnf import _istoken
from twisted.web.http import HTTPChannel, _IdentityTransferDecoder
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.iweb import INonQueuedRequestFactory

# RFC 9110's tchar, as twisted.web._abnf._istoken spells it
_TOKEN = rb"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"
# twisted.web.http._parseRequestLine's accepted form: a token, a target of bytes 0x21-0xB0, a version
REQUEST_LINE = re.compile(b"([%s]+) ([\\x21-\\xb0]+) (HTTP/1\\.[01])" % re.escape(_TOKEN)).fullmatch
_LENGTH_DIGITS = 18  # int() of a longer run of digits may refuse (its digit limit): left to Twisted

_canonical = _nameEncoder._canonicalHeaderCache.get  # only names that passed _istoken are in it
_encode = _nameEncoder.encode

Head = tuple[tuple[bytes, bytes, bytes], list[tuple[bytes, bytes]], int | None, int]


def whole_head(channel: Any, data: bytes) -> Head | None:
    """(request line, headers, Content-Length, the head's length) when `data` holds a head that
    Twisted's line-by-line reading would take whole and without a refusal; None for anything else."""
    if (
        channel._busyReceiving
        or channel._buffer
        or not channel.line_mode
        or channel.paused
        or channel._HTTPChannel__first_line != 1
        or not channel.persistent
        or channel._handlingRequest
        or channel._transferDecoder is not None
        or type(channel) is not HTTPChannel
        or (channel.transport and channel.transport.disconnecting)  # Twisted stops after one line
    ):
        return None
    end = data.find(b"\r\n\r\n", 0, min(channel.totalHeadersSize, channel.MAX_LENGTH) + 4)
    if end <= 0:
        return None
    head = data[:end]
    lines = head.split(b"\r\n")
    breaks = len(lines) - 1
    if breaks > channel.maxHeaders or head.count(b"\r") != breaks or head.count(b"\n") != breaks or 0 in head:
        return None
    request_line = REQUEST_LINE(lines[0])
    if request_line is None:
        return None
    headers = []
    length = None
    for line in lines[1:]:  # none empty: the first empty line ends the head
        # a folded line (obsolete folding) starts with SP or HT, which no token has: it is left to Twisted
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        canonical = _canonical(name)
        if canonical is None:
            if not _istoken(name):
                return None
            canonical = _encode(name)
        value = value.strip(b" \t")
        if canonical == b"Content-Length":
            if length is not None or not value.isdigit() or len(value) > _LENGTH_DIGITS:
                return None
            length = int(value)
        elif canonical == b"Transfer-Encoding":
            return None
        headers.append((canonical, value))
    return request_line.groups(), headers, length, end  # type: ignore[return-value]


_last_factory: tuple[Any, bool] = (None, False)  # (a channel's requestFactory, whether it is non-queued)


def _non_queued(factory: Any) -> bool:
    """INonQueuedRequestFactory.providedBy(factory), remembered for the last factory seen (daphne
    gives every channel the same request class, whose interfaces are declared where it is defined):
    zope's answer for a class looks its declarations up by a KeyError on every call."""
    global _last_factory
    last = _last_factory  # read once: another thread may replace it
    if last[0] is not factory:
        last = _last_factory = (factory, bool(INonQueuedRequestFactory.providedBy(factory)))
    return last[1]


def take(channel: Any, data: bytes, head: Head) -> None:
    """What HTTPChannel.dataReceived does with `data` when it holds `head` (see `whole_head`)."""
    (method, target, version), headers, length, end = head
    channel.resetTimeout()
    channel._busyReceiving = True
    try:
        channel._buffer = data[end + 4 :]  # as LineReceiver holds it while the head's last line is handled
        factory = channel.requestFactory
        requests = channel.requests
        if _non_queued(factory):
            request = factory(channel)
        else:
            request = factory(channel, len(requests))
        requests.append(request)
        channel._HTTPChannel__first_line = 0
        channel._command, channel._path, channel._version = method, target, version
        received = request.requestHeaders
        if type(received) is Headers:
            raw = received._rawHeaders
            for name, value in headers:  # no CR or LF in a value: Twisted's sanitising leaves it as it is
                raw.setdefault(name, []).append(value)
        else:
            for name, value in headers:
                received.addRawHeader(name, value)
        if length is not None:
            channel.length = length
            channel._transferDecoder = _IdentityTransferDecoder(
                length, request.handleContentChunk, channel._finishRequestBody
            )
        channel._receivedHeaderCount = len(headers)
        channel._receivedHeaderSize = end - 2 * len(headers)  # the lines' lengths, without their CRLFs
        channel._HTTPChannel__header = b""
        channel.allHeadersReceived()
        if channel.length == 0:
            channel.allContentReceived()
        else:
            channel.setRawMode()
        transport = channel.transport
        if transport and transport.disconnecting:
            return
        rest, channel._buffer = channel._buffer, b""  # with what came back in meanwhile (a replayed pipeline)
    finally:
        channel._busyReceiving = False
    if rest:
        LineReceiver.dataReceived(channel, rest)


def install() -> None:
    original = HTTPChannel.dataReceived

    @functools.wraps(original)
    def dataReceived(self: HTTPChannel, data: bytes) -> None:
        head = whole_head(self, data)
        if head is None:
            return original(self, data)
        return take(self, data, head)

    HTTPChannel.dataReceived = dataReceived  # type: ignore[method-assign]
