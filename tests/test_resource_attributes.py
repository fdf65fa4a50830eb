"""Resource attributes beyond service name, instance and host are kept, the same way in-process and via OTLP.

``service.name``, ``service.instance.id`` and ``host.name`` have fields of their
own; every other resource attribute (``service.version``,
``deployment.environment``, ``k8s.pod.name``, the SDK's ``telemetry.sdk.*``)
is kept in ``attributes`` as ``resource.<key>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

import otel_audit
from otel_audit.core import attributes as A
from otel_audit.core.record import RecordBuilder, resource_attributes
from tests.harness import VALID, rows, verify
from tests.ingest_harness import AUDIT, Ingest, audit_request, record, request

RESOURCE = {
    "service.name": "billing",
    "service.instance.id": "i-1",
    "host.name": "host-1",
    "service.version": "1.4.2",
    "deployment.environment": "prod",
    "k8s.pod.name": "billing-7d9f",
    "cloud.availability_zones": ("eu-1a", "eu-1b"),
    "process.pid": 4242,
    "sampling.ratio": 0.25,
    "feature.on": True,
}
_SEAL_EXTRA = (*A.SEAL_ATTRIBUTES, A.RECORD_CANONICAL, A.CHAIN_GENESIS)


def test_the_builder_keeps_other_resource_attributes_under_a_prefix() -> None:
    doc = (
        RecordBuilder()
        .build(
            {**AUDIT, "n": 1},
            time_unix_nano=1,
            service_name="billing",
            resource=resource_attributes({"service.name": "billing", "service.version": "2", "ratio": 0.5}),
        )
        .doc
    )
    assert doc["service_name"] == "billing"
    assert doc["attributes"] == {"n": 1, "resource.service.version": "2", "resource.ratio": 0.5}
    assert doc["problems"] == []


def test_a_record_attribute_of_the_same_name_wins_and_the_loss_is_noted() -> None:
    doc = (
        RecordBuilder()
        .build(
            {**AUDIT, "resource.service.version": "mine"},
            time_unix_nano=1,
            resource=resource_attributes({"service.version": "theirs"}),
        )
        .doc
    )
    assert doc["attributes"]["resource.service.version"] == "mine"
    assert doc["problems"] == [
        (
            "resource attribute 'service.version' not kept: the record has an attribute 'resource.service.version' "
            "of its own"
        )
    ]


@pytest.mark.storage
def test_in_process_and_through_the_ingest_the_resource_is_kept_alike(db: str, tmp_path: Path) -> None:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create(RESOURCE), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handle = otel_audit.configure(
        db, logger_provider=provider, install_handler=False, spool_dir=tmp_path / "app", metrics=False
    )
    log = logging.Logger("app.web", level=logging.DEBUG)
    log.addHandler(LoggingHandler(logger_provider=provider))
    log.info("viewed", extra={**VALID, "ward": "B3"})
    assert handle.shutdown(timeout=30)

    (exported,) = exporter.get_finished_logs()
    sealed = orjson.loads(exported.log_record.attributes[A.RECORD_CANONICAL])
    attrs = sealed["attributes"]
    assert (sealed["service_name"], sealed["service_instance_id"], sealed["host_name"]) == ("billing", "i-1", "host-1")
    assert attrs["resource.service.version"] == "1.4.2" and attrs["resource.deployment.environment"] == "prod"
    assert attrs["resource.k8s.pod.name"] == "billing-7d9f" and attrs["resource.process.pid"] == 4242
    assert attrs["resource.cloud.availability_zones"] == ["eu-1a", "eu-1b"]
    assert attrs["resource.sampling.ratio"] == 0.25 and attrs["resource.feature.on"] is True
    assert attrs["resource.telemetry.sdk.language"] == "python"
    assert not any(k in attrs for k in ("resource.service.name", "resource.host.name", "resource.service.instance.id"))
    assert sealed["problems"] == []

    otlp = encode_logs([exported])  # what another language's SDK sends: the same record without a seal
    for resource_logs in otlp.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for lr in scope_logs.log_records:
                kept = [kv for kv in lr.attributes if kv.key not in _SEAL_EXTRA]
                del lr.attributes[:]
                lr.attributes.extend(kept)
    ingest = Ingest(db, tmp_path / "ingest")
    try:
        assert ingest.export(otlp).status == 200
    finally:
        assert ingest.close()
    ((canonical,),) = rows(db, "SELECT canonical FROM audit_logs WHERE chain_id = %s", (ingest.chain_id,))
    ingested = orjson.loads(bytes(canonical))
    chain_fields = ("id", "chain_id", "seq", "prev_hash")
    assert {k: v for k, v in ingested.items() if k not in chain_fields} == {
        k: v for k, v in sealed.items() if k not in chain_fields
    }
    # The stored column is queryable: which version of the service did it.
    assert rows(db, "SELECT DISTINCT attributes->>'resource.service.version' FROM audit_logs") == [("1.4.2",)]
    assert verify(db).ok


@pytest.mark.storage
def test_a_collector_resource_reaches_the_record(db: str, tmp_path: Path) -> None:
    ingest = Ingest(db, tmp_path / "ingest")
    try:
        req = request(
            [record({**AUDIT, "test.id": "x"})],
            service="payments-go",
            resource={"service.version": "3.1.0", "deployment.environment.name": "staging"},
        )
        assert ingest.export(req).status == 200
        assert ingest.export(audit_request(1, service="bare")).status == 200  # no other resource attribute
    finally:
        assert ingest.close()
    docs = {
        d["service_name"]: d for d in (orjson.loads(bytes(c)) for (c,) in rows(db, "SELECT canonical FROM audit_logs"))
    }
    assert {k: v for k, v in docs["payments-go"]["attributes"].items() if k.startswith("resource.")} == {
        "resource.service.version": "3.1.0",
        "resource.deployment.environment.name": "staging",
    }
    assert not [k for k in docs["bare"]["attributes"] if k.startswith("resource.")]
