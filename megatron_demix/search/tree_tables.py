"""LightGBM regressors compiled to lookup tables: the same predictions as `Booster.predict`, many times faster on a pool.

    tables = TreeTables.compile([model.booster_ for model in models])
    tables.predict(pool)                      # [m, boosters], equal to each booster's predict to ~1e-15

Per-row tree traversal costs LightGBM ~45 ns per (row, tree): 2.7 s per 300-tree booster on a 200k pool,
mostly unpredictable branches. But a tree only asks, per split, whether `x[f] <= threshold`. With every
threshold of every booster sorted per feature, a row becomes one bin per feature (`searchsorted`), and
`x <= thresholds[f][p]` is `bin <= p`. Trees whose thresholds together cut few cells (the product
over their features of thresholds + 1, at most `cell_limit`) share one table holding, per cell, the
sum of their leaf values; consecutive trees of a boosted ensemble mostly repeat their splits, so ~300
trees fit in ~80 tables of <= 1024 cells. A row's cell in every table is a mixed-radix index summed
over features from per-(feature, bin) contributions, then one lookup per table: ~10 vector passes per
(row, table) instead of a traversal per (row, tree). A tree that alone cuts more cells gets a table
of its own, up to `max_cells`; a booster with a larger tree (tens of splits on many features) is
left to `Booster.predict`.

Exact: each cell's value is the sum of the leaves LightGBM would reach there, in another order
(differences ~1e-15); rows that reach the same leaves get bitwise equal predictions, so ties stay
ties. LightGBM's own input handling is reproduced: values with |x| <= 1e-35 (float) are dropped to
0.0, and with `missing_type` None a NaN is 0.0. Models outside what this covers (categorical splits,
missing-value branches, linear trees, non-identity objectives) are refused with the reason.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

ZERO_THRESHOLD = float(np.float32(1e-35))
"""LightGBM's kZeroThreshold: dense input values with |x| <= it are skipped, i.e. read as 0.0."""
DEFAULT_LEFT = 2
"""decision_type bit that only matters with missing values; the others (categorical, missing type) must be 0."""
MAX_CELLS = int(np.iinfo(np.int16).max)
"""Cell indices within a table are int16: half the memory traffic of int32 in the prediction passes."""
ROWS_PER_CHUNK = 256
"""Rows per kernel pass: the [rows, tables] index block stays in cache."""


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class _Trees:
    """Every tree of several boosters, flattened: internal nodes and leaves numbered across all trees."""

    booster: np.ndarray  # [trees] which booster each tree belongs to
    root: np.ndarray  # [trees] root node, or ~leaf for a one-leaf tree
    feature: np.ndarray  # [nodes]
    threshold: np.ndarray  # [nodes] float64, as LightGBM stores it (the model text has 17 digits)
    left: np.ndarray  # [nodes] child node, or ~leaf
    right: np.ndarray
    node_tree: np.ndarray  # [nodes] the tree of each node
    leaf_value: np.ndarray  # [leaves]


def _fields(text: str) -> dict[str, list[str]]:
    """The model text's `key=value` lines, per key, in order (one per tree for the per-tree keys)."""
    fields: dict[str, list[str]] = {}
    for line in text.split("\n"):
        key, _, value = line.partition("=")
        fields.setdefault(key, []).append(value)
    return fields


def _numbers(lines: list[str], dtype) -> np.ndarray:
    """All values of one per-tree field, concatenated (one-leaf trees have empty split fields)."""
    return np.array(" ".join(lines).split(), dtype=dtype)


def _parse(boosters) -> _Trees:
    """The trees from each booster's model text (the iterations `Booster.predict` uses by default)."""
    parts = []
    node_base = leaf_base = tree_base = 0
    with ThreadPoolExecutor(min(len(boosters), _cpus())) as executor:  # LightGBM's C call releases the GIL
        texts = list(executor.map(lambda booster: booster.model_to_string(), boosters))
    for b, text in enumerate(texts):
        trees, _, _ = text.partition("\nend of trees")
        field = _fields(trees)
        objective = field["objective"][0].split()[0]
        decision = _numbers(field["decision_type"], np.int64)
        problems = ([f"objective {objective} (only `regression` outputs the raw sum)"] * (objective != "regression")
                    + ["several trees per iteration"] * (field["num_tree_per_iteration"] != ["1"])
                    + ["averaged output (random forest mode)"] * ("average_output" in field)
                    + ["linear trees"] * any(v != "0" for v in field["is_linear"])
                    + ["categorical splits"] * any(v != "0" for v in field["num_cat"])
                    + ["missing-value splits (zero_as_missing, or NaN in the training data)"]
                    * bool(np.any(decision & ~DEFAULT_LEFT)))
        if problems:
            raise ValueError(f"TreeTables: booster {b} has {'; '.join(problems)}: predict it with Booster.predict")
        # Trees with the same splits (boosting repeats many) become one tree with the summed leaves.
        splits = list(zip(field["split_feature"], field["threshold"], field["left_child"], field["right_child"]))
        kept = {}
        same = np.array([kept.setdefault(split, len(kept)) for split in splits])
        first = np.unique(same, return_index=True)[1]
        all_leaves = np.array(field["num_leaves"], dtype=np.int64)
        leaf_values = _numbers(field["leaf_value"], np.float64)
        leaves = all_leaves[first]
        nodes = leaves - 1
        node_tree = tree_base + np.repeat(np.arange(len(leaves)), nodes)
        node_start = node_base + np.cumsum(nodes) - nodes
        leaf_start = leaf_base + np.cumsum(leaves) - leaves
        tree_leaves_from = np.cumsum(all_leaves) - all_leaves  # leaf i of tree t adds onto leaf i of its kept tree
        leaf_of = np.arange(len(leaf_values)) + np.repeat(leaf_start[same] - leaf_base - tree_leaves_from, all_leaves)

        def renumber(key):  # tree-local children (node, or ~leaf) -> numbered across all trees
            child = _numbers([field[key][t] for t in first], np.int64)
            tree = node_tree - tree_base
            return np.where(child >= 0, child + node_start[tree], ~(~child + leaf_start[tree]))

        parts.append((np.full(len(leaves), b), np.where(nodes > 0, node_start, ~leaf_start),
                      _numbers([field["split_feature"][t] for t in first], np.int64),
                      _numbers([field["threshold"][t] for t in first], np.float64),
                      renumber("left_child"), renumber("right_child"), node_tree,
                      np.bincount(leaf_of, weights=leaf_values, minlength=leaves.sum())))
        node_base += nodes.sum()
        leaf_base += leaves.sum()
        tree_base += len(leaves)
    return _Trees(*(np.concatenate(column) for column in zip(*parts)))


def _groups(trees: _Trees, position: np.ndarray, cell_limit: int, max_cells: int) -> tuple[list, list[int]]:
    """Trees that share a table: [(booster, {feature: sorted threshold positions}, member trees)], and
    the boosters left to LightGBM (one of their trees alone has more than `max_cells` cells).

    Per booster, trees sorted by their splits (repeats become neighbours) join the current table
    while its cells (product over features of thresholds + 1) stay within `cell_limit`.
    """
    width = int(position.max(initial=0)) + 1
    keys = trees.feature * width + position
    bounds = np.searchsorted(trees.node_tree, np.arange(len(trees.root) + 1))
    splits = [tuple(sorted(set(keys[a:b].tolist()))) for a, b in zip(bounds[:-1], bounds[1:])]
    groups, untabled = [], []
    for b in np.unique(trees.booster).tolist():
        order = sorted(np.flatnonzero(trees.booster == b).tolist(), key=splits.__getitem__)
        if any(math.prod(c + 1 for c in Counter(k // width for k in splits[t]).values()) > max_cells for t in order):
            untabled.append(b)
            continue
        members, current, counts = [], set(), Counter()
        for t in order:
            grown = counts + Counter(k // width for k in splits[t] if k not in current)
            if members and math.prod(c + 1 for c in grown.values()) > cell_limit:
                groups.append((b, current, members))
                members, current, grown = [], set(), Counter(k // width for k in splits[t])
            members.append(t)
            current.update(splits[t])
            counts = grown
        groups.append((b, current, members))
    return [(b, {f: np.array(sorted(k % width for k in keys if k // width == f)) for f in sorted({k // width for k in keys})},
             members) for b, keys, members in groups], untabled


@dataclass
class TreeTables:
    """Boosters compiled to tables (see the module docstring); `predict` gives one column per booster."""

    thresholds: list[np.ndarray]
    """Per feature, the sorted distinct thresholds of all trees: a row's bin is how many lie below its value."""
    contributions: list[np.ndarray]
    """Per feature [bins, tables] int16: the bin's part of each table's cell index (mixed radix)."""
    values: np.ndarray
    """Every table's cells, concatenated: the sum of the leaf values its trees give there."""
    offsets: np.ndarray
    """[tables] where each table's cells start in `values`."""
    tabled: list[int]
    """The boosters in the tables, in order."""
    starts: np.ndarray
    """First table of each of them (tables are ordered by booster)."""
    untabled: dict[int, object]
    """Boosters with a tree too large for a table, predicted by LightGBM: {booster index: Booster}."""

    @classmethod
    def compile(cls, boosters, cell_limit: int = 1024, max_cells: int = MAX_CELLS) -> "TreeTables":
        """`cell_limit`: cells up to which trees share a table (larger tables cost cache misses)."""
        if not 1 <= cell_limit <= max_cells <= MAX_CELLS:
            raise ValueError(f"TreeTables: need 1 <= cell_limit {cell_limit} <= max_cells {max_cells} <= {MAX_CELLS}")
        n_features = {booster.num_feature() for booster in boosters}
        if len(n_features) != 1:
            raise ValueError(f"TreeTables: the boosters were fitted on different feature counts {sorted(n_features)}")
        n_features = n_features.pop()
        trees = _parse(boosters)
        thresholds = [np.unique(trees.threshold[trees.feature == f]) for f in range(n_features)]
        position = np.empty(len(trees.feature), np.int64)
        for f, values in enumerate(thresholds):
            on_f = trees.feature == f
            position[on_f] = np.searchsorted(values, trees.threshold[on_f])
        groups, untabled = _groups(trees, position, cell_limit, max_cells)

        # Each table's cells, with a representative bin per feature: the highest bin of the cell.
        shapes = [[len(p) + 1 for p in cuts.values()] for _, cuts, _ in groups]
        sizes = np.array([math.prod(shape) for shape in shapes], dtype=np.int64)
        offsets = np.cumsum(sizes) - sizes
        representative = np.zeros((sizes.sum(), n_features), np.int32)
        contributions = [np.zeros((len(t) + 1, len(groups)), np.int16) for t in thresholds]
        for g, ((_, cuts, _), shape) in enumerate(zip(groups, shapes)):
            cells = np.indices(shape).reshape(len(shape), sizes[g])
            stride = np.prod(shape, dtype=np.int64)
            for i, (f, cut) in enumerate(cuts.items()):
                representative[offsets[g]:offsets[g] + sizes[g], f] = np.append(cut, len(thresholds[f]))[cells[i]]
                stride //= shape[i]
                contributions[f][:, g] = np.searchsorted(cut, np.arange(len(thresholds[f]) + 1)) * stride

        # Every member tree traversed on every cell of its table (the bin test `bin <= position` is
        # `x <= threshold`); a cell's value sums its trees' leaves in member order.
        members = np.array([t for _, _, m in groups for t in m], dtype=np.int64)
        member_cells = np.repeat(sizes, [len(m) for _, _, m in groups])
        member_first = np.repeat(offsets, [len(m) for _, _, m in groups])
        pair_tree = np.repeat(members, member_cells)
        pair_cell = np.arange(member_cells.sum()) - np.repeat(np.cumsum(member_cells) - member_cells - member_first, member_cells)
        node = trees.root[pair_tree]
        active = np.flatnonzero(node >= 0)
        while len(active):
            n = node[active]
            left = representative[pair_cell[active], trees.feature[n]] <= position[n]
            node[active] = np.where(left, trees.left[n], trees.right[n])
            active = active[node[active] >= 0]
        values = np.bincount(pair_cell, weights=trees.leaf_value[~node], minlength=int(sizes.sum()))
        tabled = sorted({b for b, _, _ in groups})
        starts = np.searchsorted([b for b, _, _ in groups], tabled)
        return cls(thresholds, contributions, values, offsets, tabled, starts, {b: boosters[b] for b in untabled})

    def predict(self, X: np.ndarray) -> np.ndarray:
        """[rows, boosters] predictions, equal to each booster's `predict(X)` up to summation order."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.thresholds):
            raise ValueError(f"TreeTables.predict: X has shape {X.shape}; expected [rows, {len(self.thresholds)}]")
        out = np.empty((len(X), len(self.tabled) + len(self.untabled)))
        for b, booster in self.untabled.items():
            out[:, b] = booster.predict(X, num_threads=_cpus())
        X = np.where(np.isnan(X) | (np.abs(X) <= ZERO_THRESHOLD), 0.0, X)
        used = [f for f, t in enumerate(self.thresholds) if len(t) or f == 0]
        bins = {f: np.searchsorted(self.thresholds[f], X[:, f]) for f in used}

        def chunk(start: int) -> None:
            rows = slice(start, start + ROWS_PER_CHUNK)
            local = self.contributions[0].take(bins[0][rows], axis=0)
            for f in used[1:]:
                local += self.contributions[f].take(bins[f][rows], axis=0)
            out[rows, self.tabled] = np.add.reduceat(self.values.take(local + self.offsets), self.starts, axis=1)

        starts = range(0, len(X), ROWS_PER_CHUNK) if self.tabled else range(0)
        threads = min(_cpus(), len(starts))
        if threads > 1:
            with ThreadPoolExecutor(threads) as executor:
                list(executor.map(chunk, starts))
        else:
            for start in starts:
                chunk(start)
        return out
