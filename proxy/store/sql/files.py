"""Uploaded files: OpenAI-style ``file-…`` ids and collection-prefixed storage paths."""

from __future__ import annotations

import secrets
from types import MappingProxyType
from typing import Literal

from proxy.store.errors import DuplicateKey, StoreError
from proxy.store.records import BlobInfo, StoredFile
from proxy.store.sql.core import SQLCore
from proxy.store.sql.database import Row, as_datetime, utcnow

_ATTEMPTS = 5
_AFTER = MappingProxyType(
    {
        "desc": "pk < (SELECT pk FROM files WHERE id = ?)",
        "asc": "pk > (SELECT pk FROM files WHERE id = ?)",
    }
)


class FilesPart(SQLCore):
    async def add_file(
        self,
        collection: str,
        storage_path: str | None,
        filename: str,
        purpose: str,
        blob: BlobInfo,
        content_type: str,
    ) -> tuple[StoredFile, str | None]:
        replaced: str | None = None
        for _ in range(_ATTEMPTS):
            file_id = "file-" + secrets.token_hex(12)
            path = storage_path or f"{collection}/files/{file_id}/{filename}"
            if storage_path is not None:
                # Replacing: a new upload to a path gets a new id. Should a concurrent upload
                # win the race to the path in between, the insert collides and we go again.
                old = await self._db.fetchone(
                    "DELETE FROM files WHERE storage_path = ? RETURNING blob_key", (path,)
                )
                if old is not None:
                    replaced = old["blob_key"]
            try:
                row = await self._db.fetchone(
                    "INSERT INTO files (id, collection, storage_path, filename, purpose, bytes,"
                    " sha256, content_type, blob_key, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (
                        file_id,
                        collection,
                        path,
                        filename,
                        purpose,
                        blob.size,
                        blob.sha256,
                        content_type,
                        blob.key,
                        utcnow(),
                    ),
                )
            except DuplicateKey:
                continue
            assert row is not None
            return _file_from_row(row), replaced
        raise StoreError("could not record the file: too many concurrent writers to its path")

    async def get_file(self, file_id: str) -> StoredFile | None:
        row = await self._db.fetchone("SELECT * FROM files WHERE id = ?", (file_id,))
        return None if row is None else _file_from_row(row)

    async def get_file_by_path(self, storage_path: str) -> StoredFile | None:
        row = await self._db.fetchone("SELECT * FROM files WHERE storage_path = ?", (storage_path,))
        return None if row is None else _file_from_row(row)

    async def list_files(
        self,
        collection: str,
        *,
        purpose: str | None = None,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 100,
        order: Literal["asc", "desc"] = "desc",
    ) -> list[StoredFile]:
        where = ["collection = ?"]
        params: list[object] = [collection]
        if purpose is not None:
            where.append("purpose = ?")
            params.append(purpose)
        if prefix:
            where.append("substr(storage_path, 1, ?) = ?")
            params += [len(prefix), prefix]
        if after is not None:
            where.append(_AFTER[order])
            params.append(after)
        condition = " AND ".join(where)
        direction = "DESC" if order == "desc" else "ASC"
        # Only fixed fragments are spliced in; every value is a bound parameter.
        sql = f"SELECT * FROM files WHERE {condition} ORDER BY pk {direction} LIMIT ?"  # noqa: S608
        rows = await self._db.fetchall(sql, (*params, limit))
        return [_file_from_row(row) for row in rows]

    async def list_paths(
        self, collection: str, prefix: str, *, after: str | None = None, limit: int = 1000
    ) -> list[StoredFile]:
        where = "collection = ? AND substr(storage_path, 1, ?) = ?"
        params: list[object] = [collection, len(prefix), prefix]
        if after is not None:
            where += " AND storage_path > ?"
            params.append(after)
        sql = f"SELECT * FROM files WHERE {where} ORDER BY storage_path LIMIT ?"  # noqa: S608
        rows = await self._db.fetchall(sql, (*params, limit))
        return [_file_from_row(row) for row in rows]

    async def delete_file(self, file_id: str) -> StoredFile | None:
        row = await self._db.fetchone("DELETE FROM files WHERE id = ? RETURNING *", (file_id,))
        return None if row is None else _file_from_row(row)


def _file_from_row(row: Row) -> StoredFile:
    return StoredFile(
        id=row["id"],
        collection=row["collection"],
        storage_path=row["storage_path"],
        filename=row["filename"],
        purpose=row["purpose"],
        bytes=int(row["bytes"]),
        sha256=row["sha256"],
        content_type=row["content_type"],
        blob_key=row["blob_key"],
        created_at=as_datetime(row["created_at"]),
    )
