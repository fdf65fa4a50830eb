"""Where a configured attribute name lives in a record document.

The privacy policy is configured in *attribute* names (``audit.actor.id``,
``user.id``, ``client.address``, ``audit.old_values``, ``patient.email``), the
names applications log with; the record document keeps the audit fields under
column names (``actor_id``, ``ip_address``). This module maps one to the other
and reads and replaces values in a document, so pseudonymization and
encryption share one notion of "a field".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from otel_audit.core import attributes as A

__all__ = ["CLIENT_ADDRESS", "FIELD_OF", "replace_field"]

#: Attribute name -> document field, for the audit fields that have a column.
FIELD_OF: dict[str, str] = {
    name: field
    for name, field in A.INPUT_FIELDS.items()
    if field in ("actor_id", "user_id", "session_id", "ip_address", "user_agent", "reason", "resource_id", "old_values")
}
CLIENT_ADDRESS = A.CLIENT_ADDRESS
_OLD_VALUES_PREFIX = A.AUDIT_OLD_VALUES + "."


def replace_field(doc: dict[str, Any], name: str, transform: Callable[[Any], Any]) -> tuple[bool, Any]:
    """Replace the value of attribute ``name`` in ``doc`` by ``transform(value)``.

    Returns ``(found, new value)``. ``client.address`` is special: its column
    (``ip_address``) is a PostgreSQL ``inet`` and cannot hold a protected
    value, so the protected value moves to ``attributes['client.address']``
    and the column stays NULL. ``audit.old_values.<key>`` names one entry of
    the old values map.
    """
    field = FIELD_OF.get(name)
    if field == "ip_address":
        value = doc.pop("ip_address", None)
        attributes = doc["attributes"]
        if value is None:
            value = attributes.get(CLIENT_ADDRESS)
            if value is None:
                return False, None
        new = attributes[CLIENT_ADDRESS] = transform(value)
        return True, new
    if field is not None:
        value = doc.get(field)
        if value is None:
            return False, None
        new = doc[field] = transform(value)
        return True, new
    if name.startswith(_OLD_VALUES_PREFIX):
        old = doc.get("old_values")
        key = name[len(_OLD_VALUES_PREFIX) :]
        if isinstance(old, dict) and old.get(key) is not None:
            new = old[key] = transform(old[key])
            return True, new
        return False, None
    attributes = doc["attributes"]
    value = attributes.get(name)
    if value is None:
        return False, None
    new = attributes[name] = transform(value)
    return True, new
