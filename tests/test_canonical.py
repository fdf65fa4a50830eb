"""The fast canonical encoder is held to the reference RFC 8785 implementation."""

from __future__ import annotations

import math
import struct

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_audit.core.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalEncodingError,
    canonical_json,
    jcs_number,
    reference_canonical_json,
)
from otel_audit.core.normalize import Normalizer

# JSON values inside the canonical domain: what the normalizer produces.
texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | finite_floats | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=600, deadline=None)
@given(json_values)
def test_fast_encoder_matches_rfc8785(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(texts, json_values, max_size=8))
def test_promises_from_the_normalizer_are_safe(attrs: dict) -> None:
    """The hot path skips walks when the normalizer promises no floats / ASCII keys."""
    norm = Normalizer([])
    normalized = norm.value(attrs, "attributes")
    fast = canonical_json(normalized, has_float=norm.has_float, ascii_keys=norm.ascii_keys)
    assert fast == rfc8785.dumps(normalized)


@settings(max_examples=2000, deadline=None)
@given(finite_floats)
def test_float_rendering_matches_ecmascript(value: float) -> None:
    assert jcs_number(value).encode() == rfc8785.dumps(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (1.5e-7, "1.5e-7"),
        (1e16, "10000000000000000"),
        (1e21, "1e+21"),
        (123456.789, "123456.789"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_float_rule_examples(value: float, expected: str) -> None:
    """The float rule written in docs/specification.md: ECMAScript Number.prototype.toString."""
    assert jcs_number(value) == expected
    assert canonical_json({"x": value}) == b'{"x":' + expected.encode() + b"}"


def test_every_float_bit_pattern_class_round_trips() -> None:
    for bits in (0x0000000000000001, 0x000FFFFFFFFFFFFF, 0x0010000000000000, 0x7FEFFFFFFFFFFFFF, 0x3FF0000000000001):
        value = struct.unpack("<d", struct.pack("<Q", bits))[0]
        assert float(jcs_number(value)) == value
        assert jcs_number(value).encode() == rfc8785.dumps(value)


def test_non_ascii_keys_sort_by_utf16_code_units() -> None:
    # U+FB01 sorts after U+1F600 by code point, before it by UTF-16 code units.
    value = {"\U0001f600": 1, "\ufb01": 2, "a": 3}
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json(value).index("\ufb01".encode()) > canonical_json(value).index(b'"a"')


def test_out_of_domain_values_are_refused_not_mangled() -> None:
    with pytest.raises(CanonicalEncodingError):
        jcs_number(math.nan)
    with pytest.raises(CanonicalEncodingError):
        reference_canonical_json(2**60)
    with pytest.raises(CanonicalEncodingError):
        canonical_json({"x": "\ud800"})


def test_normalizer_converts_and_says_so() -> None:
    problems: list[str] = []
    norm = Normalizer(problems)
    out = norm.value(
        {"big": 2**60, "nan": math.nan, "inf": -math.inf, "raw": b"\x00\xff", "obj": object, "t": (1, 2), 3: "k"},
        "attributes",
    )
    assert out["big"] == str(2**60)
    assert out["nan"] == "NaN" and out["inf"] == "-Infinity"
    assert out["raw"] == "AP8="
    assert out["t"] == [1, 2]
    assert out["3"] == "k"
    assert isinstance(out["obj"], str)
    assert len(problems) == 6, problems
    assert all(p.startswith("attributes") for p in problems)
    assert canonical_json(out) == rfc8785.dumps(out)


def test_integral_floats_become_integers() -> None:
    norm = Normalizer([])
    assert norm.value(2.0, "x") == 2 and type(norm.value(2.0, "x")) is int
    assert norm.has_float is False
    assert norm.value(2.5, "x") == 2.5 and norm.has_float is True
