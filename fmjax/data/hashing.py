"""Stable hashes: split assignment and cache names must not change between runs or hosts.

Python's built-in `hash` of a str is salted per process, so it cannot be used for either.
"""

import hashlib


def fingerprint(*parts: object, length: int = 16) -> str:
  """A short hex digest of the parts' reprs; equal inputs give equal names on every host."""
  digest = hashlib.sha256()
  for part in parts:
    digest.update(repr(part).encode("utf-8"))
    digest.update(b"\x00")  # separator, so ('ab', 'c') and ('a', 'bc') differ
  return digest.hexdigest()[:length]


def unit_interval(key: str) -> float:
  """Maps a key to a stable, roughly uniform number in [0, 1)."""
  value = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
  return value / 2.0**64
