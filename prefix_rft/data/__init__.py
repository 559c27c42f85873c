"""Problems and their sources: the `Problem` record, readers for OpenR1 / LUFFY / chat / plain
files and the hub, LUFFY's OpenR1 filter, seeded data fractions and a synthetic arithmetic task."""

from prefix_rft.data.filter import FilterStats, data_fraction, dedupe_problems, filter_openr1
from prefix_rft.data.problem import Problem, save_problems
from prefix_rft.data.readers import iter_rows, load_problems, read_problems
from prefix_rft.data.synthetic import synthetic_arithmetic

__all__ = [
    "FilterStats",
    "Problem",
    "data_fraction",
    "dedupe_problems",
    "filter_openr1",
    "iter_rows",
    "load_problems",
    "read_problems",
    "save_problems",
    "synthetic_arithmetic",
]
