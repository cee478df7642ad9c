"""First stages: candidate generation over the whole corpus (concept inverted list, surrogate
text, deep permutations, exact brute force), all with search(query_side, n) -> (ids, scores).

    stage = open_first_stage(index_dir, "concepts")
    ids, scores = stage.search(QuerySide(concepts, mask, global_vector), n)  # [Q, n] each
"""

from lateint.index.first_stage.build import (
    BUILD_NAMES,
    SEARCH_NAMES,
    add,
    build_stages,
    built_stages,
    delete,
    open_first_stage,
)
from lateint.index.first_stage.query import QuerySide
from lateint.index.first_stage.sources import ArraySource

__all__ = [
    "BUILD_NAMES",
    "SEARCH_NAMES",
    "ArraySource",
    "QuerySide",
    "add",
    "build_stages",
    "built_stages",
    "delete",
    "open_first_stage",
]
