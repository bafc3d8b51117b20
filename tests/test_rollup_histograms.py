"""The rollups' histogram documents (:mod:`flask_traffic.stores._rolluphistograms`):
what is written is read back exactly, documents kept as JSON before are
still read, and a summary adds them up to the same histograms as a step
per weight would."""

from __future__ import annotations

import base64
import json
import random
from collections import defaultdict

import pytest

from flask_traffic.stores._rolluphistograms import (
    decode,
    encode,
    feed_histograms,
    merge_histograms,
)
from flask_traffic.summary import HISTOGRAM_MAX_INDEX, SummaryBuilder

Histograms = dict[str | None, dict[int, float]]
ROUTES: list[str | None] = [None, "/", "/users/<int:id>", "/caf\u00e9/\u2603", '/"quoted"\\']


def random_histograms(seed: int, weight: float | None = None) -> Histograms:
    """Sparse histograms of some routes; whole weights unless ``weight``."""
    rng = random.Random(seed)
    found: Histograms = {}
    for route in ROUTES:
        indexes = rng.sample(range(HISTOGRAM_MAX_INDEX + 1), rng.randint(1, 12))
        found[route] = {
            index: (weight if weight is not None else float(rng.randint(1, 9))) for index in indexes
        }
    return found


def as_sparse(document: str) -> Histograms:
    """A document's weights, without the zeros within the spans."""
    found: Histograms = {}
    for route, offset, weights in decode(document):
        into = found.setdefault(route, {})
        for index, weight in enumerate(weights, offset):
            if weight:
                into[index] = into.get(index, 0.0) + weight
    return found


def json_document(histograms: Histograms) -> str:
    """A document as the rollups kept it before: JSON of
    ``{route as JSON: [[index, weight], ...]}``."""
    return json.dumps(
        {json.dumps(route): sorted(pairs.items()) for route, pairs in histograms.items()}
    )


@pytest.mark.parametrize(
    ("weight", "code"),
    [(None, "B"), (300.0, "H"), (70_000.0, "d"), (1 / 0.3, "d"), (2.5, "d")],
)
def test_round_trip(weight: float | None, code: str) -> None:
    """Weights come back as the floats they were, whole ones in the
    narrowest array that holds them; any route name, null included."""
    histograms = random_histograms(seed=len(code), weight=weight)
    document = merge_histograms(None, histograms)
    assert document is not None
    assert document.startswith("h1:")
    assert as_sparse(document) == histograms
    body = document.encode("ascii")
    assert b"{" not in body, "a new document never reads as JSON"
    assert {type(w) for _, _, ws in decode(document) for w in ws} <= {int, float}
    raw = base64.b64decode(document[3:])
    names = int.from_bytes(raw[:4], "little")
    assert chr(raw[4 + names + 4 * len(histograms)]) == code


def test_nothing_to_encode() -> None:
    """No weight at all is no document; nothing added keeps what was there."""
    assert encode({}) is None
    assert encode({"/": [0.0] * (HISTOGRAM_MAX_INDEX + 1)}) is None
    assert merge_histograms(None, {}) is None
    assert merge_histograms("h1:kept", {}) == "h1:kept"


def test_merge_adds_and_reads_old_documents() -> None:
    """Merging into a document, of either form, adds weight for weight."""
    first, second = random_histograms(seed=1), random_histograms(seed=2)
    expected: defaultdict[str | None, defaultdict[int, float]] = defaultdict(
        lambda: defaultdict(float)
    )
    for histograms in (first, second):
        for route, pairs in histograms.items():
            for index, weight in pairs.items():
                expected[route][index] += weight
    for stored in (json_document(first), merge_histograms(None, first)):
        merged = merge_histograms(stored, second)
        assert merged is not None
        assert merged.startswith("h1:")
        assert as_sparse(merged) == {route: dict(pairs) for route, pairs in expected.items()}


def test_feed_equals_a_step_per_weight() -> None:
    """A summary fed documents of both forms (and buckets with none) has
    the histograms a step per weight gives, and keeps what it had."""
    buckets = [
        random_histograms(seed=seed, weight=None if seed % 2 else 1 / 0.7) for seed in range(8)
    ]
    documents: list[str | None] = [
        json_document(histograms) if i % 3 == 0 else merge_histograms(None, histograms)
        for i, histograms in enumerate(buckets)
    ]
    documents.insert(2, None)
    builder = SummaryBuilder(None, None, ["request_route", "response_time"])
    builder.add_route_time("/", 7, 1.0)
    expected: defaultdict[str | None, defaultdict[int, float]] = defaultdict(
        lambda: defaultdict(float)
    )
    expected["/"][7] += 1.0
    for histograms in buckets:
        for route, pairs in histograms.items():
            for index, weight in pairs.items():
                expected[route][index] += weight
    feed_histograms(builder, documents)
    assert {route: dict(counts) for route, counts in builder.route_times.items()} == {
        route: dict(counts) for route, counts in expected.items()
    }
