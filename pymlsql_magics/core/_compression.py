"""Whether a copy's tar stream is compressed on the way, and with what.

On a slow link a copy of source files or CSV moves several times faster compressed; data that does
not compress (random bytes, archives, images) moves as it is, so it is never slower than without.
`auto` decides from a sample of the data (at most 1 MiB, from up to 16 files): worth it when zlib's
fastest level shrinks the sample to WORTH of its size or less. The codec is zstd (fast enough not
to hold a fast link back) when both ends have it, else gzip; the stream is decompressed by the
same program at the other end.
"""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

from ._errors import ConfigError

MODES = ("auto", "on", "off")
CODECS = ("zstd", "gzip")  # in order of preference
WORTH = 0.7
SAMPLE_FILES = 16
SAMPLE_EACH = 65536
COMPRESS = {"zstd": "zstd -q -1 -T0 -c", "gzip": "gzip -1 -c"}
DECOMPRESS = {"zstd": "zstd -q -d -c", "gzip": "gzip -d -c"}
# Which codecs an instance has: a line per program found.
REMOTE_CODECS = "command -v " + " ".join(CODECS)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"--compress must be auto, on or off, got {mode!r}",
                          hint="auto (the default) compresses only data that shrinks.")  # fmt: skip
    return mode


def codecs_in(output: str) -> set[str]:
    """The codecs named by REMOTE_CODECS' output."""
    return {line.strip().rsplit("/", 1)[-1] for line in output.splitlines()} & set(CODECS)


def pick(mode: str, remote: set[str], ratio: float) -> str | None:
    """The codec to use, or None: off, nothing worth it (auto), or no codec at both ends."""
    if mode == "off" or (mode == "auto" and ratio > WORTH):
        return None
    return next((codec for codec in CODECS if codec in remote and shutil.which(codec)), None)


def sample_ratio(top: Path) -> float:
    """How far zlib's fastest level shrinks a sample of the regular files under `top` (1.0: not at all)."""
    sample = bytearray()
    for path in _some_files(top):
        try:
            with path.open("rb") as file:
                sample += file.read(SAMPLE_EACH)
        except OSError:
            continue  # the copy itself says what cannot be read
    if not sample:
        return 1.0
    return len(zlib.compress(bytes(sample), 1)) / len(sample)


def _some_files(top: Path) -> list[Path]:
    if not top.is_dir():
        return [top]
    found: list[Path] = []
    for folder, _, names in os.walk(top):
        found += [Path(folder) / name for name in names if (Path(folder) / name).is_file()]
        if len(found) >= SAMPLE_FILES:
            break
    return found[:SAMPLE_FILES]


# The same sample on an instance, for a download: RAW and PACKED bytes of its first files' heads.
_HEADS = (f'printf "%s\\n" "$f" | while IFS= read -r p; do [ -n "$p" ] && head -c {SAMPLE_EACH} -- "$p" 2>/dev/null; '
          "done")
REMOTE_SAMPLE = (
    f'f=$(find "$r" -type f 2>/dev/null | head -n {SAMPLE_FILES}); raw=$({_HEADS} | wc -c); '
    f"packed=$({_HEADS} | gzip -1 -c 2>/dev/null | wc -c)"
)
