"""A bucket's ``response_time`` histograms, one per route, as one text
document: what every store's rollups keep per bucket (a SQL or SQLite
column, a Redis hash field), merged by the fold and added up by a summary.

A summary of 30 days adds up some 45 of these documents of 200 routes
each, so the document is made to be read fast, by C code rather than by
a Python step per histogram bucket. Version 1 (``"h1:"`` then base64):

======================  ====================================================
``<I`` *n*              length of the routes' JSON
*n* bytes               the routes, a JSON list (a route is text or null)
``<H`` per route        the first histogram index it has a weight at
``<H`` per route        how many indexes from there on it keeps
1 byte                  the weights' array type code: ``B``, ``H`` or ``d``
the weights             per route, a weight for every index of its span
                        (zeros within it), little-endian
======================  ====================================================

Whole weights (no sampled record) fit a byte or two an index, which keeps
the document smaller than JSON; any other weight is kept as a double, the
float it was, so histograms, and so percentiles, stay equal to the raw
summary's. A summary adds each route's span to its sums with one
``map(operator.add, ...)``. Documents kept before (JSON,
``{route as JSON: [[index, weight], ...]}``) are still read, and are
rewritten in this form by the next fold that touches their bucket.
"""

from __future__ import annotations

import base64
import itertools
import json
import operator
import sys
import typing as t
from array import array
from collections.abc import Iterable, Iterator, Mapping

from ..summary import HISTOGRAM_MAX_INDEX

if t.TYPE_CHECKING:
    from ..summary import SummaryBuilder

__all__ = ["decode", "encode", "feed_histograms", "merge_histograms", "merged_routes"]

Route = str | None
#: Per route, a weight for every histogram index (``HISTOGRAM_MAX_INDEX + 1``).
Dense = list[float]

_PREFIX = "h1:"
_SIZE = HISTOGRAM_MAX_INDEX + 1
# The stored arrays are little-endian, whatever the machine's order.
_SWAP = sys.byteorder == "big"
# Whole weights up to these fit the type code's item.
_WHOLE_CODES = (("B", 0xFF), ("H", 0xFFFF))


def _read(code: str, data: bytes) -> array[t.Any]:
    values = array(code)
    values.frombytes(data)
    if _SWAP:
        values.byteswap()
    return values


def _bytes(values: array[t.Any]) -> bytes:
    if _SWAP:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


class _Parts(t.NamedTuple):
    """A version 1 document taken apart."""

    routes: list[Route]
    offsets: array[int]
    lengths: array[int]
    #: The weights' type code, and the weights as stored (little-endian).
    code: str
    data: bytes


def _parts(document: str) -> _Parts:
    body = base64.b64decode(document[len(_PREFIX) :])
    size = int.from_bytes(body[:4], "little")
    at = 4 + size
    routes: list[Route] = json.loads(body[4:at])
    count = len(routes)
    offsets = _read("H", body[at : at + 2 * count])
    lengths = _read("H", body[at + 2 * count : at + 4 * count])
    at += 4 * count
    return _Parts(routes, offsets, lengths, chr(body[at]), body[at + 1 :])


def decode(document: str) -> Iterator[tuple[Route, int, t.Sequence[float]]]:
    """``(route, first index, weights from there on)`` of each route of a
    document (either version)."""
    if not document.startswith(_PREFIX):
        yield from _decode_json(document)
        return
    routes, offsets, lengths, code, data = _parts(document)
    weights = _read(code, data)
    start = 0
    for route, offset, length in zip(routes, offsets, lengths, strict=True):
        end = start + length
        yield route, offset, weights[start:end]
        start = end


def _decode_json(document: str) -> Iterator[tuple[Route, int, t.Sequence[float]]]:
    for key, pairs in json.loads(document).items():
        if not pairs:
            continue
        offset = min(index for index, _ in pairs)
        weights = [0.0] * (max(index for index, _ in pairs) - offset + 1)
        for index, weight in pairs:
            weights[index - offset] += weight
        yield json.loads(key), offset, weights


def encode(histograms: Mapping[Route, Dense]) -> str | None:
    """The document of ``histograms`` (``None`` for none)."""
    routes: list[Route] = []
    offsets = array("H")
    lengths = array("H")
    weights: list[float] = []
    for route, dense in histograms.items():
        used = list(itertools.compress(range(len(dense)), dense))
        if not used:
            continue
        routes.append(route)
        offsets.append(used[0])
        lengths.append(used[-1] - used[0] + 1)
        weights.extend(dense[used[0] : used[-1] + 1])
    if not routes:
        return None
    code = "d"
    if all(map(float.is_integer, map(float, weights))):
        largest = max(weights)
        code = next((code for code, bound in _WHOLE_CODES if largest <= bound), "d")
    values = array(code, map(int, weights) if code != "d" else weights)
    names = json.dumps(routes, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    body = b"".join(
        (
            len(names).to_bytes(4, "little"),
            names,
            _bytes(offsets),
            _bytes(lengths),
            code.encode("ascii"),
            _bytes(values),
        )
    )
    return _PREFIX + base64.b64encode(body).decode("ascii")


def _add(sums: dict[Route, Dense], route: Route, offset: int, weights: t.Sequence[float]) -> None:
    dense = sums.get(route)
    if dense is None:
        dense = sums[route] = [0.0] * _SIZE
    end = offset + len(weights)
    # One pass in C over the route's span, not a Python step per index.
    dense[offset:end] = map(operator.add, dense[offset:end], weights)


def _add_document(sums: dict[Route, Dense], document: str, names: dict[str, Route]) -> None:
    """Add the weights of a document (either version) to ``sums``;
    ``names`` keeps the routes of JSON keys read so far."""
    if document.startswith(_PREFIX):
        for route, offset, weights in decode(document):
            _add(sums, route, offset, weights)
        return
    # A document kept before: a step per weight, as fast as it was read then.
    for key, pairs in json.loads(document).items():
        if key not in names:
            names[key] = json.loads(key)
        route = names[key]
        dense = sums.get(route)
        if dense is None:
            dense = sums[route] = [0.0] * _SIZE
        for index, weight in pairs:
            dense[index] += weight


def merge_histograms(stored: str | None, added: Mapping[Route, Mapping[int, float]]) -> str | None:
    """A bucket's document with the weights ``added`` (``{route: {histogram
    index: weight}}``) added: the fold's, under its lock."""
    if not added:
        return stored
    sums: dict[Route, Dense] = {}
    if stored is not None:
        _add_document(sums, stored, {})
    for route, histogram in added.items():
        dense = sums.get(route)
        if dense is None:
            dense = sums[route] = [0.0] * _SIZE
        for index, weight in histogram.items():
            dense[index] += weight
    return encode(sums)


class _Sums:
    """The histograms of many documents added up, per route.

    Whole weights (the documents of unsampled traffic) are added as one
    Python integer per route, a 64-bit field per histogram index: one
    integer addition, in C, adds a route's whole span, where a list of
    floats takes a step per index and a summary adds some 200 routes of 30
    to 90 documents. Fields cannot carry into each other below 2**64
    requests per route and index. Other weights are added as floats."""

    def __init__(self) -> None:
        self.whole: dict[Route, int] = {}
        self.dense: dict[Route, Dense] = {}
        self._names: dict[str, Route] = {}

    def add(self, document: str) -> None:
        if not document.startswith(_PREFIX):
            _add_document(self.dense, document, self._names)
            return
        routes, offsets, lengths, code, data = _parts(document)
        start = 0
        if code == "d":
            weights = _read(code, data)
            for route, offset, length in zip(routes, offsets, lengths, strict=True):
                _add(self.dense, route, offset, weights[start : start + length])
                start += length
            return
        # Each stored weight widened to a little-endian field of 8 bytes:
        # its bytes copied to every 8th place, by C slices.
        width = array(code).itemsize
        packed = bytearray(_WIDTH * (len(data) // width))
        for place in range(width):
            packed[place::_WIDTH] = data[place::width]
        whole, get = self.whole, self.whole.get
        for route, offset, length in zip(routes, offsets, lengths, strict=True):
            end = start + length
            value = int.from_bytes(packed[start * _WIDTH : end * _WIDTH], "little")
            whole[route] = get(route, 0) + (value << (offset * _BITS))
            start = end

    def routes(self) -> Iterator[tuple[Route, t.Sequence[float]]]:
        """Each route's weight per index (``HISTOGRAM_MAX_INDEX + 1`` of them)."""
        for route, value in self.whole.items():
            counts = _unpack(value)
            dense = self.dense.get(route)
            yield route, counts if dense is None else list(map(operator.add, dense, counts))
        for route, dense in self.dense.items():
            if route not in self.whole:
                yield route, dense

    def merged(self) -> t.Sequence[float]:
        """Every route's histogram added into one."""
        merged: t.Sequence[float] = _unpack(sum(self.whole.values()))
        for dense in self.dense.values():
            merged = list(map(operator.add, merged, dense))
        return merged


# The integer fields of whole weights (:class:`_Sums`): 8 bytes each.
_FIELD = "Q"
_WIDTH = 8
_BITS = 8 * _WIDTH


def _unpack(value: int) -> array[int]:
    return _read(_FIELD, value.to_bytes(_SIZE * _WIDTH, "little"))


def feed_histograms(builder: SummaryBuilder, documents: Iterable[str | None]) -> None:
    """Feed ``builder`` the histograms of some buckets."""
    sums = _Sums()
    for document in documents:
        if document is not None:
            sums.add(document)
    route_times = builder.route_times
    for route, weights in sums.routes():
        counts = route_times[route]
        for index in itertools.compress(range(_SIZE), weights):
            counts[index] += weights[index]


def merged_routes(documents: Iterable[str | None]) -> t.Sequence[float]:
    """The histograms of every route of some buckets' documents added up
    into one, a weight per index: the buckets' ``response_time`` over all
    routes, in the histogram's own buckets, so its percentiles are those
    the records give."""
    sums = _Sums()
    for document in documents:
        if document is not None:
            sums.add(document)
    return sums.merged()
