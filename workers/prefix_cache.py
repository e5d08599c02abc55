"""A prefix KV cache across requests: a token trie over cached sequences, reuse of the
longest cached prefix, and least-recently-used eviction under a memory budget.

Any cached sequence that shares the first L tokens with a new prompt serves those L
tokens: its keys and values are sliced to L (the radix property SGLang's cache has).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Per layer: (keys, values), each [1, kv_heads, tokens, head_dim].
KV = list[tuple[Any, Any]]


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    # Entries whose token sequence passes through this node (any of them can serve it).
    entries: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class _Entry:
    tokens: tuple[int, ...]
    kv: KV
    nbytes: int


@dataclass(frozen=True)
class PrefixHit:
    length: int  # tokens served from the cache
    kv: KV  # sliced to ``length``


def kv_nbytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixCache:
    """Thread-safe; the engine's scheduler is its main user."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._root = _Node()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recent first
        self._ids = itertools.count()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int], *, max_length: int) -> PrefixHit:
        """The longest cached prefix of ``tokens``, at most ``max_length`` tokens."""
        with self._lock:
            node, depth, best = self._root, 0, None
            for token in tokens[:max_length]:
                child = node.children.get(token)
                if child is None or not child.entries:
                    break
                node, depth = child, depth + 1
                best = node
            if best is None or depth == 0:
                return PrefixHit(0, [])
            entry_id = max(best.entries, key=self._recency)
            self._entries.move_to_end(entry_id)
            entry = self._entries[entry_id]
        kv = [(k[:, :, :depth], v[:, :, :depth]) for k, v in entry.kv]
        return PrefixHit(depth, kv)

    def insert(self, tokens: Sequence[int], kv: KV) -> None:
        """Cache ``kv`` (covering exactly ``tokens``); entries it extends are dropped."""
        tokens = tuple(tokens)
        if not tokens:
            return
        entry = _Entry(tokens, kv, kv_nbytes(kv))
        if entry.nbytes > self.budget_bytes:
            return
        with self._lock:
            # An entry whose tokens are a prefix of the new ones is redundant now.
            # (An entry passing through depth d shares our first d tokens; one that also
            # ends there is a prefix of ours.)
            node, redundant = self._root, []
            for depth, token in enumerate(tokens, start=1):
                child = node.children.get(token)
                if child is None:
                    break
                node = child
                redundant += [e for e in node.entries if len(self._entries[e].tokens) == depth]
            for entry_id in set(redundant):
                self._remove(entry_id)
            node, path = self._root, []
            for token in tokens:
                node = node.children.setdefault(token, _Node())
                path.append(node)
            entry_id = next(self._ids)
            for n in path:
                n.entries.add(entry_id)
            self._entries[entry_id] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.budget_bytes and self._entries:
                self._remove(next(iter(self._entries)))

    def clear(self) -> None:
        with self._lock:
            self._root = _Node()
            self._entries.clear()
            self._bytes = 0

    def _recency(self, entry_id: int) -> int:
        # OrderedDict has no index; ids grow with insertion, and recency ties are rare.
        return entry_id

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        self._bytes -= entry.nbytes
        node = self._root
        for token in entry.tokens:
            child = node.children[token]
            child.entries.discard(entry_id)
            if not child.entries:
                del node.children[token]  # nothing else passes through: prune the branch
                return
            node = child
