"""The store contract on the in-memory backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tabby.store import open_store
from tabby.store.memory import MemoryStore
from tests.store_contract import StoreContract, check_compaction


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        with MemoryStore() as store:
            assert isinstance(store, MemoryStore)
            yield store


def test_compaction() -> None:
    check_compaction(MemoryStore(history=5), history=5)


def test_open_store_dispatches_memory_url() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
