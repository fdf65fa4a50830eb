"""Columns are compared with the sealed fields exactly, by type: a superuser's edit that Python's ``==``
would let through (``true`` -> ``1``, extra digits beyond a double, an array's lower bound, an address's
netmask) is detected by name, in the fast pass and in the full walk (both modes of ``verify_mode``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from otel_audit.verify.exact import decimal_equal, json_column_equal, load_decimal, loads_or_unreadable
from otel_audit.verify.report import Kind
from tests.harness import App, verify
from tests.test_verify_tamper import tamper

N = 20

# Values whose JSON types and digits must survive the trip through jsonb and back exactly.
TRICKY = {
    "flag": True,
    "off": False,
    "ratio": 1.5,
    "tenth": 0.1,
    "tiny": 1.5e-7,
    "huge": 1e21,
    "negative": -2.25,
    "int": 3,
    "max_int": 2**53 - 1,
    "nested": {"list": [True, 1, 1.5, "1", None], "empty": {}},
}


@pytest.fixture
def exact_trail(db: str, spool_dir: Path) -> str:
    app = App(db, spool_dir)
    for i in range(N):
        app.log(
            **{
                "audit.changed_fields": ["dosage", "unit"],
                "audit.old_values": {"dosage": 1.5, "approved": True, "count": i, "notes": None},
                **TRICKY,
            }
        )
    app.log(**{"audit.reason": "no old values"})  # seq N + 1: old_values absent (SQL NULL)
    assert app.close()
    report = verify(db)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    return db


@pytest.mark.storage
@pytest.mark.usefixtures("verify_mode")
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("attributes", """jsonb_set(attributes, '{flag}', '1')"""),  # true -> 1
        ("attributes", """jsonb_set(attributes, '{off}', '0')"""),  # false -> 0
        ("attributes", """jsonb_set(attributes, '{int}', 'true')"""),  # 3 -> true is caught by == too; 1 below
        ("attributes", """jsonb_set(attributes, '{ratio}', '1.50000000000000001')"""),  # same double
        ("attributes", """jsonb_set(attributes, '{tenth}', '0.1000000000000000055511151231257827')"""),
        ("attributes", """jsonb_set(attributes, '{max_int}', '9007199254740991.0000000001')"""),
        ("attributes", """jsonb_set(attributes, '{nested,list,0}', '1')"""),  # nested true -> 1
        ("attributes", """jsonb_set(attributes, '{nested,list,1}', 'true')"""),  # nested 1 -> true
        ("old_values", """jsonb_set(old_values, '{approved}', '1')"""),
        ("old_values", """jsonb_set(old_values, '{dosage}', '1.50000000000000001')"""),
        ("old_values", """jsonb_set(old_values, '{notes}', '0')"""),  # null -> 0
        ("changed_fields", "'[0:1]={dosage,unit}'"),  # same elements, changed_fields[1] is now 'unit'
        ("changed_fields", "'{{dosage,unit}}'"),  # two dimensions
        ("ip_address", "'10.1.2.3/24'"),  # the netmask is part of the inet value
        ("ip_address", "'::ffff:10.1.2.3'"),  # the IPv4-mapped IPv6 address is another inet value
        ("timestamp", "timestamp + interval '1 microsecond'"),
        ("trace_flags", "coalesce(trace_flags, 0) + 1"),
        ("severity_number", "severity_number + 1"),
        ("format_version", "2"),
    ],
)
def test_an_edit_only_an_exact_comparison_sees_is_detected(exact_trail: str, column: str, value: str) -> None:
    tamper(exact_trail, f"UPDATE audit_logs SET {column} = {value} WHERE seq = 7")
    findings = verify(exact_trail).errors
    assert [(f.kind, f.seq) for f in findings] == [(Kind.MODIFIED, 7)], [str(f) for f in findings]
    name = "v" if column == "format_version" else column
    assert f"column {name} was changed" in findings[0].detail


@pytest.mark.storage
@pytest.mark.usefixtures("verify_mode")
def test_json_null_where_the_field_is_absent_is_detected(exact_trail: str) -> None:
    """SQL NULL (field absent) and jsonb 'null' are different values: `old_values IS NULL` tells them apart."""
    tamper(exact_trail, f"UPDATE audit_logs SET old_values = 'null'::jsonb WHERE seq = {N + 1}")
    findings = verify(exact_trail).errors
    assert [(f.kind, f.seq) for f in findings] == [(Kind.MODIFIED, N + 1)], [str(f) for f in findings]
    assert "column old_values was changed" in findings[0].detail


@pytest.mark.storage
@pytest.mark.usefixtures("verify_mode")
def test_the_same_numbers_written_another_way_are_not_a_finding(exact_trail: str) -> None:
    """jsonb keeps numeric values: 1.5 as 1.50 and 3 as 3.0 are the same decimal value, not an edit."""
    tamper(
        exact_trail,
        "UPDATE audit_logs SET attributes = jsonb_set(jsonb_set(attributes, '{ratio}', '1.50'), "
        "'{int}', '3.0') WHERE seq = 7",
    )
    report = verify(exact_trail)
    assert report.ok and not report.findings, [str(f) for f in report.findings]


def test_decimal_rule() -> None:
    assert decimal_equal(load_decimal("1e+21"), load_decimal("1000000000000000000000"))
    assert decimal_equal(load_decimal("[1.5, 3]"), load_decimal("[1.50, 3.0]"))
    assert not decimal_equal(load_decimal("1.5"), load_decimal("1.50000000000000001"))
    assert not decimal_equal(load_decimal("true"), load_decimal("1"))
    assert not decimal_equal(load_decimal("[false]"), load_decimal("[0]"))
    assert not decimal_equal(load_decimal('{"a": null}'), load_decimal('{"a": 0}'))
    assert decimal_equal(Decimal("0.1"), load_decimal("0.1"))


@pytest.mark.parametrize(
    ("sealed", "stored", "same"),
    [
        ('{"a":true}', '{"a": true}', True),
        ('{"a":true}', '{"a": 1}', False),
        ('{"a":1}', '{"a": true}', False),
        ('{"a":1.5}', '{"a": 1.50000000000000001}', False),
        ('{"a":1.5e-7}', '{"a": 0.00000015}', True),
        ('{"a":1e+21}', '{"a": 1000000000000000000000}', True),
        ('{"a":1}', '{"a": 123456789012345678901234567890}', False),  # beyond the fast parser
        ('{"a":"x"}', '{"a": "x"}', True),
        ('{"a":[1,true]}', '{"a": [true, 1]}', False),
    ],
)
def test_json_column_rule(sealed: str, stored: str, same: bool) -> None:
    canonical = ('{"attributes":' + sealed + "}").encode()
    doc = loads_or_unreadable(canonical)
    assert json_column_equal(doc, "attributes", loads_or_unreadable(stored), stored, canonical) is same


@pytest.mark.storage
def test_the_fast_pass_proves_a_trail_of_tricky_values_clean(exact_trail: str) -> None:
    """Exactness must not cost the fast pass its speed: untampered floats, booleans, nulls and arrays
    are proved clean there, not sent to the full walk."""
    import psycopg

    from otel_audit.verify.ranges import ChainGroup, check_task

    with psycopg.connect(exact_trail) as conn:
        chains = tuple(r[0] for r in conn.execute("SELECT chain_id::text FROM audit_chains"))
        results = check_task(conn, ChainGroup(chains, {}))
    assert results and all(r.clean for r in results), [r.why for r in results]
    assert sum(r.rows for r in results) == N + 1


@pytest.mark.storage
@pytest.mark.usefixtures("verify_mode")
@pytest.mark.parametrize("sealed", ["b", 1, True, None, ["a"]], ids=["other-string", "number", "true", "null", "list"])
def test_an_attributes_column_copied_from_the_record_before_is_detected(
    db: str, spool_dir: Path, sealed: object
) -> None:
    """The fast pass keeps the parsed value of an attributes text that held only strings, and compares the
    next rows storing the same text with it: a record whose column was overwritten with its neighbour's
    (the same text, where the sealed value differs, by value or only by type) is still caught."""
    app = App(db, spool_dir)
    for i in range(N):
        app.log(tag=sealed if i == 6 else "a")  # seq 7 seals another tag than every other record
    assert app.close()
    assert verify(db).ok
    tamper(db, "UPDATE audit_logs SET attributes = (SELECT attributes FROM audit_logs WHERE seq = 6) WHERE seq = 7")
    findings = verify(db).errors
    assert [(f.kind, f.seq) for f in findings] == [(Kind.MODIFIED, 7)], [str(f) for f in findings]
    assert "column attributes was changed" in findings[0].detail
