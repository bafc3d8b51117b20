"""HyperLogLog sketches: the unique visitors of a rollup bucket, in 4 kB
(:mod:`flask_traffic.rollups`), merged and counted by summaries."""

from __future__ import annotations

import math
import re
import zlib

__all__ = ["HyperLogLog"]

# A register that is set.
_SET = re.compile(b"[^\x00]")
# Sketches with fewer registers set than this are stored sparse.
_SPARSE_UP_TO = 128
# 2 ** -rank for every rank a register can hold.
_POWERS = [2.0**-rank for rank in range(66)]


class HyperLogLog:
    """Distinct counts in 4,096 registers (4 kB): standard error 1.6 %.

    :param registers: bytes of a sketch to go on from.
    """

    PRECISION = 12
    SIZE = 1 << PRECISION
    _REST = 64 - PRECISION
    # The high bit of each register, as one integer (see merge()).
    _HIGH_BITS = int.from_bytes(b"\x80" * SIZE, "little")

    __slots__ = ("registers",)

    def __init__(self, registers: bytes | None = None) -> None:
        if registers is not None and len(registers) != self.SIZE:
            raise ValueError(f"a sketch has {self.SIZE} registers, not {len(registers)}")
        self.registers = bytearray(registers) if registers is not None else bytearray(self.SIZE)

    def add(self, hashed: int) -> None:
        """Count a 64-bit hash."""
        index = hashed >> self._REST
        rest = hashed & ((1 << self._REST) - 1)
        # The position of the first 1 bit in the remaining 52 bits.
        rank = self._REST - rest.bit_length() + 1
        if rank > self.registers[index]:
            self.registers[index] = rank

    def merge(self, other: bytes | bytearray) -> None:
        """Add every hash another sketch counted."""
        mine = int.from_bytes(self.registers, "little")
        theirs = int.from_bytes(other, "little")
        if (mine | theirs) & self._HIGH_BITS or len(other) != self.SIZE:
            # Not registers this class writes (a rank is at most 53): the
            # plain way, a max() per register.
            self.registers = bytearray(map(max, self.registers, other))
            return
        # Each byte's max at once, in a few operations on 4,096-byte
        # integers (a max() per register took 0.3 to 1 ms a merge): with
        # the high bit of every byte set, a byte of mine minus theirs keeps
        # that bit exactly where mine is the larger or equal, borrowing
        # nothing from the next byte.
        high = self._HIGH_BITS
        larger = (((mine | high) - theirs) & high) >> 7
        take = (larger << 8) - larger
        merged = theirs ^ ((mine ^ theirs) & take)
        self.registers = bytearray(merged.to_bytes(self.SIZE, "little"))

    def count(self) -> float:
        """The estimated number of distinct hashes added."""
        size = self.SIZE
        zeros = self.registers.count(0)
        if zeros == size:
            return 0.0
        alpha = 0.7213 / (1 + 1.079 / size)
        estimate = alpha * size * size / self._sum_of_powers()
        if estimate <= 2.5 * size and zeros:
            # Few distinct values: linear counting is the better estimate.
            return size * math.log(size / zeros)
        return estimate

    def _sum_of_powers(self) -> float:
        """The sum of ``2 ** -rank`` over the registers: as exact as a term
        per register, from the registers of each rank counted in C, rank
        after rank until all are (20-odd ranks, not 4,096 terms)."""
        registers = self.registers
        terms = []
        left = len(registers)
        for rank, power in enumerate(_POWERS):
            if not left:
                break
            count = registers.count(rank)
            terms.append(count * power)
            left -= count
        if left:
            # Ranks no sketch writes: a term per register.
            return math.fsum(map(_POWERS.__getitem__, registers))
        return math.fsum(terms)

    def to_bytes(self) -> bytes:
        """The registers, for storage."""
        return bytes(self.registers)

    def packed(self) -> bytes:
        """The registers for storage: a sketch of a few visitors kept as
        ``(index, rank)`` triples of bytes (``b"S"`` first), which merge in
        a step per visitor; any other compressed (``b"Z"`` first), which
        merges in a few steps on the whole."""
        registers = self.registers
        used = len(registers) - registers.count(0)
        if used >= _SPARSE_UP_TO:
            # zlib's C is faster than a Python step per register set (an
            # hour of a busy site: 1 ms a sketch, most of a fold's time a
            # bucket), and about as small.
            return b"Z" + zlib.compress(registers, 1)
        packed = bytearray(b"S")
        for found in _SET.finditer(registers):
            index = found.start()
            packed += bytes((index >> 8, index & 0xFF, registers[index]))
        return bytes(packed)

    @classmethod
    def unpacked(cls, packed: bytes) -> HyperLogLog:
        """The sketch :meth:`packed` gave."""
        # A compressed sketch is its registers as they are: no merge into
        # zeros (4,096 steps of max(), most of a month's visitor count).
        if packed[:1] == b"Z":
            return cls(zlib.decompress(packed[1:]))
        if packed[:1] != b"S":
            return cls(zlib.decompress(packed))
        sketch = cls()
        sketch.merge_packed(packed)
        return sketch

    def merge_packed(self, packed: bytes) -> None:
        """:meth:`merge` a sketch as :meth:`packed` gave it."""
        if packed[:1] == b"S":
            registers = self.registers
            for at in range(1, len(packed), 3):
                index = (packed[at] << 8) | packed[at + 1]
                if packed[at + 2] > registers[index]:
                    registers[index] = packed[at + 2]
        elif packed[:1] == b"Z":
            self.merge(zlib.decompress(packed[1:]))
        else:  # a zlib stream as kept before the prefixes
            self.merge(zlib.decompress(packed))
