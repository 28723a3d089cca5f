"""A prefix tree over tokenised catalogue titles: which tokens may come next.

Every item's path is its title's token ids followed by an end token; the node
reached through the end token is a *terminal* and holds the item ids whose
(possibly cut) titles are exactly that sequence. So:

* a title must be completed: only the end token leads to items;
* a title that is a prefix of another (``Lipstick`` / ``Lipstick Red``) has
  its own terminal next to the longer title's branch;
* identical titles, or titles cut to the same first tokens, share one
  terminal that holds all their ids, ordered by ``priority`` (then id), so a
  decoder that reaches it returns all of them in a fixed order.

The tree is stored flat (CSR arrays) so a decoder can read a node's children
as two array slices. Node ids grow in insertion order, so a parent's id is
always smaller than its children's.

Example::

    trie = build_trie([[], [5, 6], [5, 7], [5, 6]], end_token=0)
    trie.items_at(trie.lookup([5, 6, 0]))   # [1, 3]: item 1 and its duplicate 3
    trie.children(trie.lookup([5]))[0]      # tokens allowed after [5]: [6, 7]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

ROOT = 0


@dataclass(frozen=True)
class Exclusion:
    """Items a decoder must not return for one user.

    ``blocked_below[node]``: how many terminals under ``node`` hold only
    excluded items; a node is closed when that equals its terminal count.
    """

    items: frozenset[int] = frozenset()
    blocked_below: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TitleTrie:
    """Flat prefix tree. M nodes, E edges, I stored item ids.

    ``child_ptr`` (M+1,) offsets into ``child_tok``/``child_node`` (E,), tokens
    sorted within a node; ``parent`` (M,) (-1 for the root); ``depth`` (M,)
    tokens from the root; ``term_ptr`` (M+1,) offsets into ``term_items`` (I,),
    non-empty only at terminals; ``terminals_below`` (M,); ``sole_terminal``
    (M,) the only terminal under a node, -1 when there are several;
    ``item_terminal`` (n_items+1,) each item's terminal, -1 for id 0.
    """

    child_ptr: np.ndarray
    child_tok: np.ndarray
    child_node: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    term_ptr: np.ndarray
    term_items: np.ndarray
    terminals_below: np.ndarray
    sole_terminal: np.ndarray
    item_terminal: np.ndarray
    end_token: int

    @property
    def n_nodes(self) -> int:
        return int(self.parent.shape[0])

    @property
    def max_depth(self) -> int:
        """Longest path in tokens, end token included: a bound on decoding steps."""
        return int(self.depth.max())

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, child nodes) allowed after ``node``, tokens ascending."""
        a, b = self.child_ptr[node], self.child_ptr[node + 1]
        return self.child_tok[a:b], self.child_node[a:b]

    def is_terminal(self, node: int) -> bool:
        return bool(self.term_ptr[node + 1] > self.term_ptr[node])

    def items_at(self, node: int, exclusion: Exclusion | None = None) -> list[int]:
        """Item ids held by a terminal (empty for other nodes), in priority order."""
        items = self.term_items[self.term_ptr[node] : self.term_ptr[node + 1]].tolist()
        if exclusion is not None and exclusion.items:
            items = [i for i in items if i not in exclusion.items]
        return items

    def lookup(self, tokens: Iterable[int]) -> int:
        """The node reached by ``tokens`` from the root, or -1 when no title has that prefix."""
        node = ROOT
        for t in tokens:
            toks, kids = self.children(node)
            j = int(np.searchsorted(toks, t))
            if j == len(toks) or toks[j] != t:
                return -1
            node = int(kids[j])
        return node

    def items_below(self, node: int) -> list[int]:
        """Every item id in the subtree of ``node`` (depth-first, tokens ascending)."""
        out: list[int] = []
        stack = [node]
        while stack:
            n = stack.pop()
            out += self.items_at(n)
            stack += self.children(n)[1][::-1].tolist()
        return out

    def path(self, node: int) -> list[int]:
        """Nodes from ``node`` up to (and including) the root."""
        out = []
        while node >= 0:
            out.append(node)
            node = int(self.parent[node])
        return out

    def exclusion(self, items: Iterable[int]) -> Exclusion:
        """The closed parts of the tree when ``items`` may not be returned."""
        excluded = frozenset(int(i) for i in items if 0 < int(i) < len(self.item_terminal))
        blocked: dict[int, int] = {}
        for t in {int(self.item_terminal[i]) for i in excluded}:
            if t < 0 or any(i not in excluded for i in self.items_at(t)):
                continue  # a duplicate of an excluded item is still allowed
            for n in self.path(t):
                blocked[n] = blocked.get(n, 0) + 1
        return Exclusion(excluded, blocked)

    def open_terminals(self, node: int, exclusion: Exclusion | None = None) -> int:
        """Terminals under ``node`` that still hold an allowed item."""
        closed = exclusion.blocked_below.get(node, 0) if exclusion is not None else 0
        return int(self.terminals_below[node]) - closed

    def resolve(self, node: int, exclusion: Exclusion | None = None) -> int:
        """The only open terminal under ``node``, or -1 when there are none or several.

        Once a prefix leaves a single choice, the rest of the title is forced.
        """
        if self.open_terminals(node, exclusion) != 1:
            return -1
        if exclusion is None or node not in exclusion.blocked_below:
            return int(self.sole_terminal[node])
        while not self.is_terminal(node):  # walk down the one open branch
            kids = self.children(node)[1]
            node = next(int(k) for k in kids if self.open_terminals(int(k), exclusion) > 0)
        return node


def build_trie(
    title_ids: Sequence[Sequence[int]], end_token: int, priority: np.ndarray | None = None
) -> TitleTrie:
    """Build the tree from ``title_ids[i]``, item ``i``'s title tokens (index 0 ignored).

    ``priority`` (n_items+1,) orders the ids sharing a terminal (higher first,
    then lower id), e.g. training popularity. Any ``end_token`` inside a title
    is dropped: it would end the title there.
    """
    n = len(title_ids)
    prio = np.zeros(n) if priority is None else np.asarray(priority, dtype=np.float64)
    if prio.shape != (n,):
        raise ValueError(f"priority has shape {prio.shape}, expected ({n},)")
    kids: list[dict[int, int]] = [{}]
    parent = [-1]
    depth = [0]
    held: dict[int, list[int]] = {}
    item_terminal = np.full(n, -1, dtype=np.int64)
    for item in range(1, n):
        node = ROOT
        for t in [int(t) for t in title_ids[item] if int(t) != end_token] + [end_token]:
            nxt = kids[node].get(t)
            if nxt is None:
                nxt = len(kids)
                kids[node][t] = nxt
                kids.append({})
                parent.append(node)
                depth.append(depth[node] + 1)
            node = nxt
        held.setdefault(node, []).append(item)
        item_terminal[item] = node

    m = len(kids)
    child_ptr = np.zeros(m + 1, dtype=np.int64)
    child_ptr[1:] = np.cumsum([len(k) for k in kids])
    child_tok = np.empty(child_ptr[-1], dtype=np.int64)
    child_node = np.empty(child_ptr[-1], dtype=np.int64)
    for node, k in enumerate(kids):
        toks = sorted(k)
        child_tok[child_ptr[node] : child_ptr[node + 1]] = toks
        child_node[child_ptr[node] : child_ptr[node + 1]] = [k[t] for t in toks]

    counts = np.zeros(m, dtype=np.int64)
    for node, items in held.items():
        counts[node] = len(items)
    term_ptr = np.zeros(m + 1, dtype=np.int64)
    term_ptr[1:] = np.cumsum(counts)
    term_items = np.empty(term_ptr[-1], dtype=np.int64)
    for node, items in held.items():
        items.sort(key=lambda i: (-prio[i], i))
        term_items[term_ptr[node] : term_ptr[node + 1]] = items

    parent_arr = np.asarray(parent, dtype=np.int64)
    below = (counts > 0).astype(np.int64)
    for node in range(m - 1, 0, -1):  # children have larger ids than their parent
        below[parent_arr[node]] += below[node]
    sole = np.full(m, -1, dtype=np.int64)
    for t in held:
        node = t
        while node >= 0 and below[node] == 1:
            sole[node] = t
            node = int(parent_arr[node])

    return TitleTrie(
        child_ptr=child_ptr,
        child_tok=child_tok,
        child_node=child_node,
        parent=parent_arr,
        depth=np.asarray(depth, dtype=np.int64),
        term_ptr=term_ptr,
        term_items=term_items,
        terminals_below=below,
        sole_terminal=sole,
        item_terminal=item_terminal,
        end_token=int(end_token),
    )
