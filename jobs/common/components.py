"""Connected components of a graph held as a Spark DataFrame of edges, never collected to the driver.

The algorithm is large-star / small-star (Kiveris et al., "Connected Components in MapReduce and
Beyond", SoCC 2014), the one text-dedup's Spark script uses, written with DataFrame operations
(a window minimum and a ``distinct`` per operation) instead of Python per edge. Edges are held as
``(child, parent)`` with ``child > parent``. Both operations keep every node and every component,
and only ever point a node at a smaller one, so they converge (in O(log² n) rounds) to a *star forest*:
every child has one parent and no parent is a child. Then each star is one component and its root is
the component's smallest node, whatever the input order.

Every intermediate edge set is materialised with ``localCheckpoint``: the loop needs each round's
result once for the next round and once for the convergence check, so materialising costs nothing
extra, and it cuts the lineage that would otherwise grow by two shuffles a round. A local checkpoint
rather than a reliable one (``setCheckpointDir``) because it needs no shared folder (works the same
on a laptop, a cluster and Spark Connect) and the loss of an executor only means the step fails and
is rerun from its Delta inputs, which is cheap next to keeping checkpoint files for every round.

This module knows nothing of documents; it must not collect edges or nodes to the driver.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.common.errors import CleanwellError


class ComponentsDidNotConverge(CleanwellError):
    """Large-star / small-star did not reach a star forest within the allowed rounds."""


@dataclass(frozen=True)
class Components:
    """``labels``: one row per node that has an edge, ``(node, component)``, where ``component`` is the
    smallest node of its component. ``rounds``: large-star + small-star rounds it took."""

    labels: DataFrame
    rounds: int


def _oriented(edges: DataFrame, left: str, right: str) -> DataFrame:
    """``(child, parent)`` with child > parent, self-loops dropped, each edge once."""
    return (edges.where(F.col(left) != F.col(right))
            .select(F.greatest(left, right).alias("child"), F.least(left, right).alias("parent"))
            .distinct())


def _large_star(edges: DataFrame) -> DataFrame:
    """Each node ``u`` connects every *larger* neighbour to the smallest of ``u`` and its neighbours."""
    both = edges.select(F.col("child").alias("node"), F.col("parent").alias("neighbour")).unionByName(
        edges.select(F.col("parent").alias("node"), F.col("child").alias("neighbour")))
    smallest = F.least(F.min("neighbour").over(Window.partitionBy("node")), F.col("node"))
    return (both.withColumn("smallest", smallest).where(F.col("neighbour") > F.col("node"))
            .select(F.col("neighbour").alias("child"), F.col("smallest").alias("parent")).distinct())


def _small_star(edges: DataFrame) -> DataFrame:
    """Each node ``u`` connects itself and every *smaller* neighbour to the smallest of them."""
    with_min = edges.withColumn("smallest", F.min("parent").over(Window.partitionBy("child")))
    own = with_min.select("child", F.col("smallest").alias("parent"))
    neighbours = (with_min.where(F.col("parent") != F.col("smallest"))
                  .select(F.col("parent").alias("child"), F.col("smallest").alias("parent")))
    return own.unionByName(neighbours).distinct()


def _is_star_forest(edges: DataFrame) -> bool:
    """No node has two parents and no node is both a child and a parent (one Spark job)."""
    roles = edges.select(F.col("child").alias("node"), F.lit(1).alias("as_child"), F.lit(0).alias("as_parent")) \
        .unionByName(edges.select(F.col("parent").alias("node"), F.lit(0).alias("as_child"),
                                  F.lit(1).alias("as_parent")))
    violations = (roles.groupBy("node").agg(F.sum("as_child").alias("parents"), F.max("as_parent").alias("is_parent"))
                  .where((F.col("parents") > 1) | ((F.col("parents") == 1) & (F.col("is_parent") == 1))))
    return violations.limit(1).count() == 0


def connected_components(edges: DataFrame, left: str = "left", right: str = "right",
                         max_rounds: int = 100) -> Components:
    """Connected components of the undirected graph whose edges are the rows ``(left, right)`` of
    ``edges`` (any comparable id type; both columns the same type). Nodes without an edge are not in
    the result. Raises :class:`ComponentsDidNotConverge` after ``max_rounds`` rounds (a bound far above
    what the algorithm needs: it is a guard against a bug, not a tuning knob)."""
    current = _oriented(edges, left, right).localCheckpoint()
    rounds = 0
    while not _is_star_forest(current):
        if rounds == max_rounds:
            raise ComponentsDidNotConverge(f"connected components did not converge in {max_rounds} rounds")
        current = _small_star(_large_star(current).localCheckpoint()).localCheckpoint()
        rounds += 1
    labels = current.select(F.col("child").alias("node"), F.col("parent").alias("component")).unionByName(
        current.select(F.col("parent").alias("node"), F.col("parent").alias("component"))).distinct()
    return Components(labels, rounds)
