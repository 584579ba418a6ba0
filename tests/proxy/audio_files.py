"""Audio files for the duration tests, made here: a WAV whose header lies about its byte rate,
an Ogg Opus stream at a low bitrate (real Ogg pages and Opus headers written with mutagen's page
writer; the packets are silent frames), and a constant-bitrate MP3 of silent frames."""

import struct

from mutagen.ogg import OggPage

from .media_upstream import wav_bytes

OPUS_SERIAL = 7
OPUS_PRE_SKIP = 312


def lying_wav(seconds: float, byte_rate: int = 0xFFFFFFF0) -> bytes:
    """A WAV of `seconds` whose `fmt ` chunk declares `byte_rate` (every decoder still plays it
    for `seconds`: the sample layout, not the byte rate, says how long it is)."""
    audio = bytearray(wav_bytes(seconds))
    audio[28:32] = struct.pack("<I", byte_rate)
    return bytes(audio)


def _page(sequence: int, packets: list[bytes], position: int, *, first=False, last=False) -> bytes:
    page = OggPage()
    page.serial, page.sequence, page.position, page.packets = OPUS_SERIAL, sequence, position, packets
    page.first, page.last = first, last
    return page.write()


def opus_bytes(seconds: float, bytes_per_second: int = 500) -> bytes:
    """Ogg Opus of `seconds` in 20 ms packets, about `bytes_per_second` of payload (500 B/s is
    4 kbit/s: far below the 128 kbit/s a size-based guess assumes)."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, OPUS_PRE_SKIP, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 4) + b"test" + struct.pack("<I", 0)
    out = _page(0, [head], 0, first=True) + _page(1, [tags], 0)
    packets, size = int(seconds * 50), max(1, bytes_per_second // 50)
    for index, first in enumerate(range(0, packets, 50)):
        count = min(50, packets - first)
        out += _page(2 + index, [b"\xfc" + bytes(size - 1)] * count, OPUS_PRE_SKIP + (first + count) * 960,
                     last=first + count >= packets)  # fmt: skip
    return out


def mp3_bytes(frames: int) -> bytes:
    """MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417-byte frames of 1,152 samples each."""
    return (b"\xff\xfb\x90\x00" + bytes(413)) * frames
