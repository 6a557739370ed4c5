"""DP statistics on a table with OpenDP: counts, sums, means, histograms, quantiles.

Every query is an OpenDP measurement built from the query alone (never from the data), under
add/remove-one-record neighbours (``SymmetricDistance``, d_in=1: the relation DP-SGD accounting
uses too). Its privacy event is read off the measurement's actual noise scale and OpenDP's own
sensitivity (stability map), so the owner's price (:func:`queries_event`, no data) and the
executed event (:func:`run_queries`) are the same object by construction.

The modules, each importing only those before it: ``queries`` (validation), ``mechanisms``
(compilation to OpenDP measurements, the noise rule, the events), ``answers`` (running them on
the table, noise intervals, the privacy report).
"""
from .answers import (LEVEL, OTHER, PURE_REPORT_DELTA, Progress, mean_interval, noise_halfwidth,
                      run_queries)
from .mechanisms import Part, compile_queries, compose_events, queries_event
from .queries import (DEFAULT_CANDIDATES, MAX_BINS, MAX_CANDIDATES, MAX_EPSILON, MAX_QUERIES,
                      QUERY_TYPES, StatsError, is_numeric_dtype, validate_queries)

__all__ = [
    "DEFAULT_CANDIDATES", "LEVEL", "MAX_BINS", "MAX_CANDIDATES", "MAX_EPSILON", "MAX_QUERIES",
    "OTHER", "PURE_REPORT_DELTA", "Part", "Progress", "QUERY_TYPES", "StatsError",
    "compile_queries", "compose_events", "is_numeric_dtype", "mean_interval", "noise_halfwidth",
    "queries_event", "run_queries", "validate_queries",
]
