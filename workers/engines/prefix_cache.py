"""A prefix KV cache across requests: a radix tree of token spans, one tree per
namespace (tenant), least-recently-used eviction of leaves under a memory budget.

Each node holds the keys and values of its own span of tokens only, so a prefix that
many sequences share (a long system prompt, a mindspace's history) is stored once and
its children hold only what differs. A lookup walks one path from the root and
concatenates the spans it passes: its cost grows with the prompt, not with the number
of cached sequences (the structure of SGLang's RadixAttention cache).

Namespaces keep tenants apart: a request is served only from spans inserted under its
own namespace, so ``cached_tokens`` and latency reveal nothing of another tenant's
prompts. The namespace ``""`` holds prefixes an operator declares shared.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Per layer: (keys, values), each [1, kv_heads, tokens, head_dim].
KV = list[tuple[Any, Any]]


def kv_nbytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def _slice(kv: KV, start: int, end: int | None = None) -> KV:
    return [(k[:, :, start:end], v[:, :, start:end]) for k, v in kv]


def _own(kv: KV) -> KV:
    """A copy that holds only these tokens' memory (a slice keeps its whole base alive)."""
    return [(k.clone(), v.clone()) for k, v in kv]


@dataclass(eq=False)
class _Node:
    span: tuple[int, ...]  # the tokens on the edge from the parent to this node
    kv: KV  # keys and values of ``span`` alone
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0
    nbytes: int = 0


@dataclass(frozen=True)
class PrefixHit:
    length: int  # tokens served from the cache
    kv: KV  # covering exactly ``length`` tokens


def _common(span: Sequence[int], tokens: Sequence[int], start: int) -> int:
    """How many tokens ``span`` shares with ``tokens[start:]``."""
    n = min(len(span), len(tokens) - start)
    i = 0
    while i < n and span[i] == tokens[start + i]:
        i += 1
    return i


class PrefixCache:
    """Thread-safe; the engine's scheduler is its main user."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._roots: dict[str, _Node] = {}
        self._clock = itertools.count(1)
        self._bytes = 0
        self._nodes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        """Nodes holding keys and values (spans), across every namespace."""
        return self._nodes

    def lookup(self, tokens: Sequence[int], *, max_length: int, namespace: str = ""
               ) -> PrefixHit:
        """The longest cached prefix of ``tokens`` in ``namespace``, at most
        ``max_length`` tokens."""
        import torch

        tokens = tokens[:max_length]
        parts: list[KV] = []
        depth = 0
        with self._lock:
            node = self._roots.get(namespace)
            now = next(self._clock)
            while node is not None and depth < len(tokens):
                child = node.children.get(tokens[depth])
                if child is None:
                    break
                shared = _common(child.span, tokens, depth)
                child.last_used = now
                parts.append(child.kv if shared == len(child.span) else _slice(child.kv, 0,
                                                                                 shared))
                depth += shared
                if shared < len(child.span):
                    break
                node = child
        if not depth:
            return PrefixHit(0, [])
        if len(parts) == 1:
            return PrefixHit(depth, parts[0])
        layers = len(parts[0])
        kv = [(torch.cat([p[i][0] for p in parts], dim=2), torch.cat([p[i][1] for p in parts],
                                                                       dim=2))
              for i in range(layers)]
        return PrefixHit(depth, kv)

    def insert(self, tokens: Sequence[int], kv: KV, *, namespace: str = "") -> None:
        """Cache ``kv`` (covering exactly ``tokens``); only the part not cached yet
        takes new memory."""
        tokens = tuple(tokens)
        if not tokens:
            return
        with self._lock:
            node = self._roots.setdefault(namespace, _Node((), [], None))
            now = next(self._clock)
            depth = 0
            while depth < len(tokens):
                child = node.children.get(tokens[depth])
                if child is None:
                    break
                shared = _common(child.span, tokens, depth)
                if shared < len(child.span):
                    child = self._split(child, shared)
                child.last_used = now
                node, depth = child, depth + shared
            if depth < len(tokens):
                tail = _own(_slice(kv, depth))
                leaf = _Node(tokens[depth:], tail, node, last_used=now, nbytes=kv_nbytes(tail))
                node.children[tokens[depth]] = leaf
                self._bytes += leaf.nbytes
                self._nodes += 1
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._roots = {}
            self._bytes = 0
            self._nodes = 0

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node``'s span at ``at``: a new parent holding the first ``at`` tokens.
        Each half gets memory of its own, so evicting one frees what it counted."""
        assert node.parent is not None
        head_kv = _own(_slice(node.kv, 0, at))
        head = _Node(node.span[:at], head_kv, node.parent, last_used=node.last_used,
                     nbytes=kv_nbytes(head_kv))
        node.parent.children[node.span[0]] = head
        node.span, node.kv, node.parent = node.span[at:], _own(_slice(node.kv, at)), head
        node.nbytes -= head.nbytes
        head.children[node.span[0]] = node
        self._nodes += 1
        return head

    def _evict(self) -> None:
        """Least recently used leaves go until the cache fits its budget; a parent left
        without children becomes a leaf and may go next."""
        if self._bytes <= self.budget_bytes:
            return
        leaves = [(n.last_used, id(n), n) for n in self._leaves()]
        heapq.heapify(leaves)
        while self._bytes > self.budget_bytes and leaves:
            _, _, leaf = heapq.heappop(leaves)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.span[0]]
            self._bytes -= leaf.nbytes
            self._nodes -= 1
            if parent.parent is not None and not parent.children:
                heapq.heappush(leaves, (parent.last_used, id(parent), parent))

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self._roots.values())
        while stack:
            node = stack.pop()
            if node.parent is not None and not node.children:
                out.append(node)
            stack.extend(node.children.values())
        return out
