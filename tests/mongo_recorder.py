"""A django-mongodb-backend connection that never reaches a server, for the offline proofs.

The backend compiles every ORM operation to MQL and hands it to pymongo: `update_many(filter,
pipeline)`, `aggregate(pipeline)`, `insert_many(docs)`, `create_indexes(...)`. Here pymongo's
collection and database objects are replaced by recorders, so the service code runs for real
(the backend's own compiler, our own functions) and the test reads exactly what MongoDB would
have been asked. Reads answer with documents the test scripts; anything else pymongo could be
asked fails the test. The MongoClient underneath is lazy and points at a closed port with a
100 ms timeout: a call that slipped past the recorders fails at once instead of hanging.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from bson import ObjectId
from pymongo import MongoClient

OFFLINE_DATABASE_URL = "mongodb://127.0.0.1:1/imageproc_offline?serverSelectionTimeoutMS=100"


@dataclass
class Call:
    collection: str | None  # None: a database-level call
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def filter(self) -> Any:
        return self.args[0]

    @property
    def update(self) -> Any:
        return self.args[1]

    @property
    def pipeline(self) -> list[dict[str, Any]]:
        assert self.method == "aggregate", self
        return list(self.args[0])

    def stages(self) -> list[str]:
        return [next(iter(stage)) for stage in self.pipeline]

    def match(self) -> Any:
        matches = [stage["$match"] for stage in self.pipeline if "$match" in stage]
        assert len(matches) == 1, f"expected one $match stage: {self.pipeline}"
        return matches[0]


class _Cursor:
    """What `Collection.aggregate()` returns, as far as the backend uses it."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self._docs = iter(docs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._docs

    def __next__(self) -> dict[str, Any]:
        return next(self._docs)

    next = __next__


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._answers: dict[tuple[str | None, str], deque[Any]] = defaultdict(deque)
        self.database = FakeDatabase(self)

    def answer(self, collection: str | None, method: str, *answers: Any) -> None:
        """Queue answers: documents (a list) for `aggregate`, a matched count for `update_many`,
        or a function of the Call that returns one."""
        self._answers[(collection, method)].extend(answers)

    def next_answer(self, collection: str | None, method: str, default: Any) -> Any:
        queue = self._answers.get((collection, method))
        answer = queue.popleft() if queue else default
        # A callable answers from the call itself (when the order of calls is not fixed).
        return answer(self.calls[-1]) if callable(answer) else answer

    def collection(self, name: str, **kwargs: Any) -> FakeCollection:
        return FakeCollection(self, name)

    def record(self, collection: str | None, method: str, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("session", None)
        self.calls.append(Call(collection, method, args, kwargs))

    def on(self, collection: str) -> list[Call]:
        return [c for c in self.calls if c.collection == collection]

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method not in ("aggregate", "list_collections", "index_information")]

    def clear(self) -> None:
        self.calls.clear()


class FakeCollection:
    def __init__(self, recorder: Recorder, name: str) -> None:
        self._recorder = recorder
        self.name = name

    def aggregate(self, pipeline: list[dict[str, Any]], **kwargs: Any) -> _Cursor:
        self._recorder.record(self.name, "aggregate", pipeline, **kwargs)
        return _Cursor(self._recorder.next_answer(self.name, "aggregate", []))

    def update_many(self, filter: Any, update: Any, **kwargs: Any) -> SimpleNamespace:
        self._recorder.record(self.name, "update_many", filter, update, **kwargs)
        matched = self._recorder.next_answer(self.name, "update_many", 0)
        return SimpleNamespace(matched_count=matched, modified_count=matched)

    def delete_many(self, filter: Any, **kwargs: Any) -> SimpleNamespace:
        self._recorder.record(self.name, "delete_many", filter, **kwargs)
        return SimpleNamespace(deleted_count=self._recorder.next_answer(self.name, "delete_many", 0))

    def insert_many(self, docs: list[dict[str, Any]], **kwargs: Any) -> SimpleNamespace:
        docs = list(docs)
        self._recorder.record(self.name, "insert_many", docs, **kwargs)
        return SimpleNamespace(inserted_ids=[doc.get("_id", ObjectId()) for doc in docs])

    def create_indexes(self, indexes: list[Any], **kwargs: Any) -> list[str]:
        documents = [dict(index.document) for index in indexes]
        self._recorder.record(self.name, "create_indexes", documents, **kwargs)
        return [doc["name"] for doc in documents]

    def index_information(self) -> dict[str, Any]:
        self._recorder.record(self.name, "index_information")
        return {}

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected pymongo call {self.name}.{name}()")


class FakeDatabase:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def list_collections(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self._recorder.record(None, "list_collections", **kwargs)
        return iter([])

    def create_collection(self, name: str, **kwargs: Any) -> FakeCollection:
        self._recorder.record(None, "create_collection", name, **kwargs)
        return self._recorder.collection(name)

    def __getitem__(self, name: str) -> FakeCollection:
        return self._recorder.collection(name)

    def get_collection(self, name: str, **kwargs: Any) -> FakeCollection:
        return self._recorder.collection(name)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected pymongo database call {name}()")


def attach(wrapper: Any, recorder: Recorder) -> None:
    """Make a django_mongodb_backend DatabaseWrapper talk to the recorder only."""
    assert wrapper.vendor == "mongodb", wrapper
    # A client object makes ensure_connection() a no-op: Django never connects, so it never
    # asks the server for its version either. MongoClient(connect=False) opens no socket.
    wrapper.connection = MongoClient(OFFLINE_DATABASE_URL, connect=False)
    wrapper.get_collection = recorder.collection
    wrapper.get_database = lambda: recorder.database
    wrapper.__dict__["database"] = recorder.database  # the backend's cached_property


def migrate_offline() -> None:
    """`python -m tests.mongo_recorder` under the MongoDB settings: run `migrate` against the
    recorder and print, as JSON, every collection and index it would have created."""
    import json

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    recorder = Recorder()
    attach(connections["default"], recorder)
    call_command("migrate", interactive=False, verbosity=0)
    print(
        json.dumps(
            {
                "collections": [c.args[0] for c in recorder.calls if c.method == "create_collection"],
                "indexes": {c.collection: c.args[0] for c in recorder.calls if c.method == "create_indexes"},
                "indexes_all": [[c.collection, c.args[0]] for c in recorder.calls if c.method == "create_indexes"],
                "methods": sorted({c.method for c in recorder.calls}),
            },
            default=str,
        )
    )


if __name__ == "__main__":
    migrate_offline()
