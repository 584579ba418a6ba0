"""How long an uploaded audio file plays: the transcription's reservation and, when the provider
reports neither usage nor duration, its bill (SPEC 4). Read from what a decoder reads (sample
frames, packet granules, track durations), never from a rate the header merely declares.

- WAV / RF64 holding PCM, float, A-law or µ-law samples: frames = data bytes / (channels × bytes
  per sample), the data clamped to the bytes actually sent (a streamed WAV declares 0 or
  0xFFFFFFFF); the header's byte rate and block alignment are ignored, as decoders ignore them.
- Every other container: mutagen (pure Python, no native library, reads the container's own
  frame and packet bookkeeping: MP3 frames and Xing/VBRI tables, Ogg granule positions for Opus,
  Vorbis, Speex and FLAC, FLAC STREAMINFO sample counts, MP4/M4A track durations, AIFF, AAC, AC3,
  WMA). It was preferred to soundfile, which decodes samples: that needs libsndfile and numpy,
  costs CPU in proportion to the audio, and still cannot read M4A, a format the providers accept.
- An upload neither reads (WebM, a WAV of compressed samples, garbage): `size / MIN_BYTES_PER_SECOND`,
  an upper bound (no speech codec the providers accept goes below 6 kbit/s), flagged `decoded=False`.
- An upload that reads as audio of no length (or an empty file) is refused: `EmptyAudio`.
"""

import functools
import io
import math
import struct
from dataclasses import dataclass
from typing import IO, Any

MIN_BYTES_PER_SECOND = 750  # 6 kbit/s, Opus's floor: an undecodable upload plays at most size/750 s
MAX_READ = 8 << 20  # a container asking for more in one read (a giant tag) counts as undecodable
MAX_CHUNKS = 64
# WAVE format tags whose samples are laid out frame by frame (bytes = frames × channels × width).
LINEAR_FORMATS = {0x0001, 0x0003, 0x0006, 0x0007}
EXTENSIBLE = 0xFFFE


class EmptyAudio(ValueError):
    """The upload reads as audio that plays for no time at all."""


@dataclass(frozen=True)
class Duration:
    seconds: float
    decoded: bool  # False: the upper bound of an upload that no reader here understands


class Window(io.RawIOBase):
    """A read-only file over bytes [start, end) of a larger file (the upload inside the spooled
    form), so a reader sees the upload alone and cannot read past it."""

    def __init__(self, raw: IO[bytes], start: int, end: int) -> None:
        super().__init__()
        self._raw, self._start, self._end, self._position = raw, start, end, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end - self._start}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the upload")
        self._position = base + offset
        return self._position

    def read(self, size: int = -1) -> bytes:
        """At most the bytes left in the upload (a declared size never allocates more)."""
        left = max(0, self._end - self._start - self._position)
        wanted = left if size is None or size < 0 else min(size, left)
        if wanted > MAX_READ:
            raise OSError("a read larger than the audio reader allows")
        if wanted == 0:
            return b""
        self._raw.seek(self._start + self._position)
        data = self._raw.read(wanted)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:  # a writable buffer (memoryview, bytearray)
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _wav_frame_width(fmt: bytes) -> int | None:
    """Bytes per frame of a `fmt ` chunk whose samples are linear; None for compressed ones."""
    if len(fmt) < 16:
        return None
    tag, channels, _rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == EXTENSIBLE and len(fmt) >= 26:
        (tag,) = struct.unpack("<H", fmt[24:26])  # the sub-format GUID's first two bytes
    if tag not in LINEAR_FORMATS or channels == 0 or bits == 0:
        return None
    return channels * math.ceil(bits / 8)


def wav_duration(file: io.RawIOBase, size: int) -> float | None:
    """Seconds of a WAV/RF64 of linear samples, from its sample layout and the bytes sent; None
    when it is not one (the caller then tries the other readers)."""
    file.seek(0)
    head = file.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return None
    position, fmt = 12, b""
    for _ in range(MAX_CHUNKS):
        file.seek(position)
        header = file.read(8)
        if len(header) < 8:
            return None
        chunk_id, (chunk_size,) = header[:4], struct.unpack("<I", header[4:])
        if chunk_id == b"fmt ":
            fmt = file.read(min(chunk_size, 64))
        elif chunk_id == b"data":
            width = _wav_frame_width(fmt)
            rate = struct.unpack("<I", fmt[4:8])[0] if len(fmt) >= 8 else 0
            if width is None or rate == 0:
                return None
            available = size - (position + 8)
            data = available if chunk_size in (0, 0xFFFFFFFF) else min(chunk_size, available)
            return (max(data, 0) // width) / rate
        position += 8 + chunk_size + (chunk_size & 1)
    return None


@functools.cache
def _readers() -> tuple[Any, list[Any]]:  # mutagen (untyped) and its container classes
    """mutagen and its audio containers, imported on the first non-WAV upload (not by every
    process that serves /v1)."""
    import mutagen
    from mutagen.aac import AAC
    from mutagen.ac3 import AC3
    from mutagen.aiff import AIFF
    from mutagen.asf import ASF
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggflac import OggFLAC
    from mutagen.oggopus import OggOpus
    from mutagen.oggspeex import OggSpeex
    from mutagen.oggvorbis import OggVorbis

    return mutagen, [MP3, MP4, OggOpus, OggVorbis, OggFLAC, OggSpeex, FLAC, AIFF, AAC, AC3, ASF]


def _container_duration(file: io.RawIOBase) -> float | None:
    mutagen, containers = _readers()
    try:
        file.seek(0)
        audio = mutagen.File(file, options=containers)
    except (mutagen.MutagenError, OSError, ValueError, struct.error, IndexError, OverflowError):
        return None
    length = getattr(getattr(audio, "info", None), "length", None)
    if not isinstance(length, int | float) or not math.isfinite(length) or length < 0:
        return None
    return float(length)


def upload_duration(raw: IO[bytes], start: int, end: int) -> Duration:
    """The duration of the upload at bytes [start, end) of `raw`; raises EmptyAudio."""
    size = end - start
    if size <= 0:
        raise EmptyAudio("the uploaded file is empty")
    file = Window(raw, start, end)
    seconds = wav_duration(file, size)
    if seconds is None:
        seconds = _container_duration(file)
    if seconds is None:
        return Duration(seconds=size / MIN_BYTES_PER_SECOND, decoded=False)
    if seconds <= 0:
        raise EmptyAudio("the uploaded audio has no samples: it plays for 0 seconds")
    return Duration(seconds=seconds, decoded=True)
