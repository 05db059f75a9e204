"""Size limits for what a compressed file may unpack to (zip and tar archives, .npz, gzip'd IDX).

A 2 MB zip can hold a 2 GiB member of zeros, and a header can claim any size: without limits one
small file could exhaust memory or keep the reader busy for minutes. Every reader checks the
sizes the headers declare before reading anything, then reads each member with a bounded read,
so a header that lies cannot make it read more than it declared either.

The defaults are far above any real image dataset (the largest member of a MedMNIST+ 224 px
.npz is ~ 40 MB). Change them for one process with environment variables, as a number of bytes
with an optional K/M/G/T suffix (powers of 1024):

``LIGHTLAYERS_MAX_MEMBER_BYTES`` (default 512M): one member, uncompressed.
``LIGHTLAYERS_MAX_TOTAL_BYTES`` (default 16G): all members of one file, uncompressed.
``LIGHTLAYERS_MAX_MEMBERS`` (default 1000000): number of members (folders included).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import IO

from lightlayers.data.errors import DataError

__all__ = [
    "ENV_MAX_MEMBERS",
    "ENV_MAX_MEMBER_BYTES",
    "ENV_MAX_TOTAL_BYTES",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
    "Budget",
    "Limits",
    "current_limits",
]

MAX_MEMBER_BYTES = 512 * 2**20
MAX_TOTAL_BYTES = 16 * 2**30
MAX_MEMBERS = 1_000_000
ENV_MAX_MEMBER_BYTES = "LIGHTLAYERS_MAX_MEMBER_BYTES"
ENV_MAX_TOTAL_BYTES = "LIGHTLAYERS_MAX_TOTAL_BYTES"
ENV_MAX_MEMBERS = "LIGHTLAYERS_MAX_MEMBERS"

_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    member_bytes: int = MAX_MEMBER_BYTES
    total_bytes: int = MAX_TOTAL_BYTES
    members: int = MAX_MEMBERS


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", text, re.IGNORECASE)
    if m is None or int(m.group(1)) < 1:
        raise DataError(
            f"{name}={text!r} is not a positive size; give bytes, e.g. 536870912 or 512M."
        )
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def current_limits() -> Limits:
    """The limits in force now: the module defaults, overridden by the environment."""
    return Limits(
        member_bytes=_env_int(ENV_MAX_MEMBER_BYTES, MAX_MEMBER_BYTES),
        total_bytes=_env_int(ENV_MAX_TOTAL_BYTES, MAX_TOTAL_BYTES),
        members=_env_int(ENV_MAX_MEMBERS, MAX_MEMBERS),
    )


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:,.1f} MiB)"


class Budget:
    """Counts the members and declared sizes of one file against the limits."""

    def __init__(self, where: str, limits: Limits | None = None) -> None:
        self.where = where
        self.limits = limits or current_limits()
        self.members = 0
        self.total = 0

    def _refuse(self, what: str, env: str) -> DataError:
        return DataError(
            f"{self.where}: {what}. This looks like a damaged or malicious file (a "
            f"decompression bomb); if it is genuine, raise the limit with {env}."
        )

    def member(self, name: str, size: int) -> None:
        """Account for one member from its header, before any of its data is read."""
        lim = self.limits
        self.members += 1
        if self.members > lim.members:
            raise self._refuse(f"more than {lim.members:,} members", ENV_MAX_MEMBERS)
        if size > lim.member_bytes:
            raise self._refuse(
                f"member {name} unpacks to {_size(size)}, over the limit of "
                f"{_size(lim.member_bytes)} per member",
                ENV_MAX_MEMBER_BYTES,
            )
        self.total += max(0, size)
        if self.total > lim.total_bytes:
            raise self._refuse(
                f"members unpack to more than {_size(lim.total_bytes)} in all (reached at {name})",
                ENV_MAX_TOTAL_BYTES,
            )

    def read(self, f: IO[bytes], name: str, declared: int) -> bytes:
        """Read one member in chunks, never more than it declared (nor the member limit)."""
        cap = min(declared, self.limits.member_bytes)
        buf = bytearray()
        while len(buf) <= cap:
            chunk = f.read(min(_CHUNK, cap + 1 - len(buf)))
            if not chunk:
                return bytes(buf)
            buf += chunk
        raise self._refuse(
            f"member {name} holds more data than its header declares ({_size(declared)})",
            ENV_MAX_MEMBER_BYTES,
        )
