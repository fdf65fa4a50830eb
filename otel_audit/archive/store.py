"""Where archives live: a local directory or an S3 bucket (Object Lock), written once per object.

Both stores only ever *create* objects. Writing an object that exists with the
same bytes is a no-op (an archive run resumed after a crash writes the same
bundles again); with different bytes it is refused (:class:`StoreConflict`).

* :class:`DirectoryStore`: files created read-only (0444) through a temporary
  name and ``link`` (never an overwrite, never a torn final file), fsynced.
  A directory cannot stop its owner from deleting files; put it on WORM
  storage if that matters (verify-archive detects deletions either way).
* :class:`S3Store`: boto3 with the usual AWS configuration (``AWS_ENDPOINT_URL``,
  ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, credentials from the environment,
  profile or instance role). Each object is written with an Object Lock
  retention date in COMPLIANCE mode by default (not even the account root can
  delete or overwrite it before that date). A bucket without versioning and
  Object Lock is refused unless the caller allows it explicitly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from otel_audit.errors import StoreConflict, StoreError

__all__ = ["ArchiveStore", "DirectoryStore", "S3Store", "StoreConflict", "StoreError", "open_store"]


class ArchiveStore(Protocol):
    description: str
    url: str

    def put(self, path: str, data: bytes) -> bool:
        """Create ``path``; True if written, False if it already held these bytes."""
        ...

    def get(self, path: str) -> bytes: ...

    def list(self, prefix: str = "") -> list[str]: ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DirectoryStore:
    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self.description = f"archive directory {self.root}"
        if not self.root.is_dir():
            if not create:
                raise StoreError(f"{self.root} is not a directory; check the archive path (or mount its volume)")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the archive directory {self.root}: {exc}") from exc

    def _path(self, path: str) -> Path:
        if path.startswith("/") or ".." in Path(path).parts:
            raise StoreError(f"refusing an object path outside the archive: {path!r}")
        return self.root / path

    def put(self, path: str, data: bytes) -> bool:
        target = self._path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                return self._same(target, data)
            tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, target)  # fails if the name exists: never an overwrite
            except FileExistsError:
                return self._same(target, data)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc}") from exc
        return True

    def _same(self, target: Path, data: bytes) -> bool:
        if sha256_hex(target.read_bytes()) == sha256_hex(data):
            return False
        raise StoreConflict(
            f"{target} exists with other content; an archive object is never overwritten. If an interrupted run "
            "left it, compare it with the plan under plans/ before removing it by hand"
        )

    def get(self, path: str) -> bytes:
        target = self._path(path)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot read {target}: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        out = []
        base = self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                rel = (Path(dirpath) / name).relative_to(base).as_posix()
                if rel.startswith(prefix):
                    out.append(rel)
        return sorted(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class S3Store:
    """``s3://bucket/prefix``; see the module docstring for configuration and locking."""

    def __init__(
        self,
        url: str,
        *,
        retain_until: datetime | None = None,
        mode: str = "COMPLIANCE",
        require_lock: bool = True,
        client: Any = None,
    ) -> None:
        if not url.startswith("s3://"):
            raise StoreError(f"{url!r} is not an s3:// URL")
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise StoreError(f"{url!r} names no bucket (s3://BUCKET/PREFIX)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = url
        self.description = f"archive s3://{bucket}/{self.prefix}"
        if mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise StoreError(f"object lock mode must be COMPLIANCE or GOVERNANCE, not {mode!r}")
        self.mode = mode
        self.retain_until = retain_until
        self.require_lock = require_lock
        self._client = client or _client()
        self.locked = False

    def __getstate__(self) -> dict[str, Any]:  # sent to verify-archive's worker processes without the client
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = _client()

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def check_bucket(self) -> None:
        """Refuse a bucket without versioning and Object Lock unless that was allowed explicitly."""
        botocore = _botocore()
        try:
            versioning = self._client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except botocore.exceptions.ClientError as exc:
            raise StoreError(f"cannot read the versioning of bucket {self.bucket}: {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(f"cannot reach S3 for bucket {self.bucket}: {exc}") from exc
        try:
            config = self._client.get_object_lock_configuration(Bucket=self.bucket)
            lock = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        except botocore.exceptions.ClientError:
            lock = None
        self.locked = versioning == "Enabled" and lock == "Enabled"
        if not self.locked and self.require_lock:
            raise StoreError(
                f"bucket {self.bucket} has no Object Lock (versioning: {versioning or 'off'}, object lock: "
                f"{lock or 'off'}): anyone with delete rights could remove archived records. Create the bucket with "
                "`aws s3api create-bucket --bucket NAME --object-lock-enabled-for-bucket` (which enables "
                "versioning), or pass --allow-unlocked to archive there anyway"
            )
        if self.locked and self.retain_until is None:
            raise StoreError("an Object Lock bucket needs a retention date for each object (--retain-days)")

    def put(self, path: str, data: bytes) -> bool:
        botocore = _botocore()
        key = self._key(path)
        existing = self._head(key)
        if existing is not None:
            if sha256_hex(self.get(path)) == sha256_hex(data):
                return False
            raise StoreConflict(
                f"s3://{self.bucket}/{key} exists with other content; an archive object is never overwritten"
            )
        # If-None-Match: * makes the create atomic: a concurrent writer's object is never replaced.
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ChecksumAlgorithm": "SHA256",
            "IfNoneMatch": "*",
        }
        if self.locked and self.retain_until is not None:
            args["ObjectLockMode"] = self.mode
            args["ObjectLockRetainUntilDate"] = self.retain_until
        try:
            self._client.put_object(**args)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                if sha256_hex(self.get(path)) == sha256_hex(data):
                    return False
                raise StoreConflict(f"s3://{self.bucket}/{key} was created meanwhile with other content") from exc
            raise StoreError(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(f"cannot reach S3 to write s3://{self.bucket}/{key}: {exc}") from exc
        return True

    def _head(self, key: str) -> dict[str, Any] | None:
        botocore = _botocore()
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
            return head
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc

    def get(self, path: str) -> bytes:
        botocore = _botocore()
        key = self._key(path)
        try:
            data: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return data
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from exc
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(f"cannot reach S3 to read s3://{self.bucket}/{key}: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        botocore = _botocore()
        base = f"{self.prefix}/" if self.prefix else ""
        out: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            ):
                for obj in page.get("Contents", []):
                    out.append(obj["Key"][len(base) :])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise StoreError(f"cannot list s3://{self.bucket}/{base}: {exc}") from exc
        return sorted(out)

    def iter_versions(self) -> Iterator[dict[str, Any]]:
        base = f"{self.prefix}/" if self.prefix else ""
        for page in self._client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=base):
            yield from page.get("Versions", [])


def _botocore() -> Any:
    try:
        import botocore.exceptions
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise StoreError("S3 archives need boto3: pip install 'otel-audit[archive]'") from exc
    import botocore

    return botocore


def _client() -> Any:
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover
        raise StoreError("S3 archives need boto3: pip install 'otel-audit[archive]'") from exc
    # boto3 reads AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION and the credential chain itself.
    return boto3.client("s3")


def open_store(
    dest: str,
    *,
    create: bool = False,
    retain_until: datetime | None = None,
    mode: str = "COMPLIANCE",
    require_lock: bool = True,
) -> DirectoryStore | S3Store:
    if dest.startswith("s3://"):
        store = S3Store(dest, retain_until=retain_until, mode=mode, require_lock=require_lock)
        if create:
            store.check_bucket()
        return store
    return DirectoryStore(dest, create=create)
