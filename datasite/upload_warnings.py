"""Warnings about the real table at upload, for the owner's eyes only.

They catch what makes a released model useless or misleading before any budget is spent: a
column that gives the label away (an outcome recorded after baseline), an identifier, a column
that is (almost) constant, a label with a tiny class. They are counts and scores computed from
the records, so they are returned as owner notes (printed to the owner's terminal, like the
other upload notes) and are never published or sent to researchers.

Leakage is scored per column, one class against the rest, by the larger of two AUCs:

* the column's own ordering (missing values lowest), in whichever direction fits: catches a
  monotone leak such as days-to-death;
* the class frequency within the column's value (up to ``DISTINCT`` values) or quantile bin,
  estimated on the other half of the records (two-fold cross-fitting, so a column with many
  values does not score well by chance): catches coded leaks such as a discharge status whose
  code 3 means "died", and missingness that leaks.

Pre-encoded one-hot groups (0/1 columns ``name_a``, ``name_b``, ...) are also scored together,
since a cause-of-death one-hot may leak only as a group.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy.stats import rankdata

LEAK_AUC = 0.98          # a column separating a class from the rest this well is flagged
MIN_CLASS_FOR_AUC = 10   # classes (and their rest) with fewer records are not scored
DISTINCT = 32            # columns with more distinct values are scored in this many quantile bins
CONSTANT_SHARE = 0.995   # one value in at least this share of rows: almost constant
RARE_CLASS = 0.05        # a class under this share (or over 1 - it) of records: imbalance
                         # (under 0.5 / classes when that is smaller, for many classes)
ID_MIN_ROWS = 50         # too few rows for "all values distinct" to mean anything
ID_NAME_DISTINCT = 0.95  # an id-like name with at least this share of distinct values
ID_WORDS = {"id", "ids", "mrn", "patient", "patientid", "subject", "subjectid", "record",
            "recordid", "encounter", "ssn", "nhs", "uuid", "guid", "identifier", "accession",
            "pid", "row", "rownum", "rowid", "index"}

LEAK_WHY = ("an outcome recorded after baseline leaks the label; a model using it will not "
            "work on new patients. Drop it from the data and the schema unless it is truly "
            "known before the outcome")


def table_warnings(df: pd.DataFrame, label_column: str, schema_or_meta=None) -> list[str]:
    """Owner-only warnings about the real table ``df`` (features and ``label_column``):
    likely label leakage, id-like, constant or almost constant columns, extreme class
    imbalance. ``schema_or_meta`` (a normalised schema dict or a DatasetMeta, optional) gives
    the feature columns and the class names; without it every other column is a feature.

    The warnings describe the records, so callers must show them to the owner only."""
    features, names, declared = _declared(df, label_column, schema_or_meta)
    y, classes = _label_codes(df[label_column], declared)
    notes = [*_imbalance(y, classes, names)]
    for c in features:
        x = df[c]
        notes += [f"column {c!r}: {n}" for n in (_constant(x), _id_like(c, x)) if n]
    notes += _leaks(df, features, y, classes, names)
    return notes


def _declared(df, label_column, schema_or_meta) -> tuple[list[str], dict, list]:
    """(feature columns, class names, declared classes) from a schema dict or a DatasetMeta."""
    if isinstance(schema_or_meta, dict):
        label = schema_or_meta.get("label") or {}
        cols, names = list(schema_or_meta.get("columns") or []), dict(label.get("names") or {})
        declared = list(label.get("classes") or [])
    elif schema_or_meta is not None:
        cols = list(getattr(schema_or_meta, "features", None) or [])
        names = dict(getattr(schema_or_meta, "class_names", None) or {})
        declared = list(getattr(schema_or_meta, "labels", None) or [])
    else:
        cols, names, declared = [], {}, []
    cols = [c for c in cols if c in df.columns and c != label_column]
    if not cols:
        cols = [c for c in df.columns if c != label_column]
    return cols, {str(k): str(v) for k, v in names.items()}, declared


def _label_codes(labels: pd.Series, declared: list) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..K-1 per record (missing labels get -1) and the classes, sorted: the declared
    ones (so a declared class without records counts as 0) and any others found."""
    found = labels.dropna().unique().tolist()
    try:
        classes = sorted(set(declared) | set(found))
    except TypeError:  # mixed types: keep the order met
        classes = list(dict.fromkeys([*declared, *found]))
    codes = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    return codes, np.asarray(classes, dtype=object)


def _class_name(value, names: dict) -> str:
    key = str(value.item() if hasattr(value, "item") else value)
    return f"{key} ({names[key]!r})" if key in names else key


# -- class imbalance -----------------------------------------------------------------------------
def _imbalance(y: np.ndarray, classes: np.ndarray, names: dict) -> list[str]:
    y = y[y >= 0]
    n = len(y)
    if n == 0 or len(classes) < 2:
        return []
    counts = np.bincount(y, minlength=len(classes))
    share = counts / n
    # with many classes even balanced ones are small: then "rare" is under half a fair share
    odd = (share < min(RARE_CLASS, 0.5 / len(classes))) | (share > 1 - RARE_CLASS)
    if not odd.any():
        return []
    shown = range(len(classes)) if len(classes) <= 10 else np.flatnonzero(odd)[:10]
    listing = ", ".join(f"class {_class_name(classes[i], names)}: {counts[i]} "
                        f"({100 * share[i]:.1f}%)" for i in shown)
    return [f"extreme class imbalance in the label ({listing} of {n} records): accuracy looks "
            "high by always predicting the majority class, and DP noise drowns the few "
            "examples of a rare class. Judge models by AUC and per-class recall, use "
            "class-weighted training where a job offers it, and check that the rare class is "
            "not mislabelled"]


# -- constant and id-like columns ---------------------------------------------------------------
def _constant(x: pd.Series) -> str | None:
    counts = x.value_counts(dropna=False)
    n = len(x)
    if n == 0 or counts.iloc[0] < CONSTANT_SHARE * n:
        return None
    if len(counts) == 1:
        return ("holds the same value in every row: it tells a model nothing, while DP noise "
                "still lands on its weight; drop it from the data and the schema")
    return (f"holds one value in {counts.iloc[0]} of {n} rows ({100 * counts.iloc[0] / n:.1f}%): "
            "it tells a model almost nothing, while DP noise still lands on its weight; drop it "
            "from the data and the schema unless its few other values matter")


def _name_words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return {w for w in re.split(r"[^0-9a-z]+", spaced.lower()) if w}


def _integer_like(x: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(x):
        return False
    if pd.api.types.is_integer_dtype(x):
        return True
    if not pd.api.types.is_float_dtype(x):
        return False
    v = x.to_numpy(dtype=float, na_value=np.nan)
    return bool(np.isfinite(v).all() and np.all(v == np.round(v)))


def _id_like(name: str, x: pd.Series) -> str | None:
    n = len(x)
    if n < ID_MIN_ROWS or pd.api.types.is_bool_dtype(x):
        return None
    distinct = x.nunique(dropna=False)
    numeric = pd.api.types.is_numeric_dtype(x)
    if numeric and x.notna().all() and x.is_monotonic_increasing and distinct == n:
        why = "strictly increasing in file order (a row number or a timestamp)"
    elif distinct == n and _integer_like(x):
        why = f"all {n} values are distinct integers"
    elif (_name_words(name) & ID_WORDS and distinct >= ID_NAME_DISTINCT * n
          and (not numeric or _integer_like(x))):
        why = f"named like an identifier, with {distinct} distinct values in {n} rows"
    else:
        return None
    return (f"looks like an identifier ({why}): it says nothing about a patient's condition, "
            "a model can memorise records by it, and its order may follow the outcome. If it is "
            f"the patient id, upload with --id-column {name} (kept private, used by "
            "`datasite forget --record ID`); otherwise drop it from the schema")


# -- leakage -------------------------------------------------------------------------------------
def _ordering_aucs(order: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Per class, the Mann-Whitney AUC of ``order`` for that class against the rest (ties
    count 1/2), from one ranking of all records."""
    n1 = np.bincount(y, minlength=k).astype(float)
    rank_sums = np.bincount(y, weights=rankdata(order), minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rank_sums - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))


def _grouped_auc(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """The same AUC when records come in groups sharing one score (``pos``/``neg`` records of
    the class and of the rest per group): a sort of the few groups, not of the records."""
    values, which = np.unique(score, return_inverse=True)
    p = np.bincount(which, weights=pos, minlength=len(values))
    q = np.bincount(which, weights=neg, minlength=len(values))
    below = np.cumsum(q) - q
    return float((p * (below + q / 2)).sum() / (p.sum() * q.sum()))


def _codes(x: pd.Series) -> np.ndarray:
    """A small integer code per record: the value itself when there are at most DISTINCT
    values, else its quantile bin; missing values get a code of their own."""
    if pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x) \
            and x.nunique() > DISTINCT:
        v = x.to_numpy(dtype=float, na_value=np.nan)
        ok = ~np.isnan(v)
        edges = np.unique(np.quantile(v[ok], np.linspace(0, 1, DISTINCT + 1)[1:-1]))
        return np.where(ok, np.searchsorted(edges, np.where(ok, v, 0), side="right"), -1) + 1
    codes, _ = pd.factorize(x, use_na_sentinel=True)
    return codes + 1


def _ordering(x: pd.Series) -> np.ndarray | None:
    """The column as numbers in its own order (missing lowest), or None if it has none."""
    if not pd.api.types.is_numeric_dtype(x):
        return None
    v = x.to_numpy(dtype=float, na_value=np.nan)
    return np.where(np.isnan(v), -np.inf, v)


def _cross_fitted_aucs(codes: np.ndarray, y: np.ndarray, k: int, half: np.ndarray,
                       scored: list[int]) -> dict[int, float]:
    """Per scored class, the AUC of an honest per-value predictor: the class frequency among
    records with the same code in the other half (smoothed towards the overall class rates)."""
    m = int(codes.max()) + 1
    side = half.astype(np.int64)
    table = np.bincount((codes * 2 + side) * k + y, minlength=2 * m * k).reshape(m, 2, k)
    prior = np.bincount(y, minlength=k) / len(y)
    other = table[:, ::-1, :]  # for records on one side, the counts on the other side
    freq = (other + prior) / (other.sum(axis=2, keepdims=True) + 1.0)
    total = table.sum(axis=2).ravel()
    return {j: _grouped_auc(freq[:, :, j].ravel(), table[:, :, j].ravel(),
                            total - table[:, :, j].ravel()) for j in scored}


def _leak_score(x: pd.Series | None, codes: np.ndarray, y: np.ndarray, k: int,
                half: np.ndarray) -> tuple[float, int]:
    """(best one-vs-rest AUC, its class code) over the scorable classes."""
    counts = np.bincount(y, minlength=k)
    scored = [j for j in range(k) if min(counts[j], len(y) - counts[j]) >= MIN_CLASS_FOR_AUC]
    if k == 2:
        scored = scored[:1]  # the two one-vs-rest AUCs of a binary label are equal
    if not scored:
        return 0.0, -1
    order = _ordering(x) if x is not None else None
    raw = _ordering_aucs(order, y, k) if order is not None else None
    best = (0.0, -1)
    for j, auc in _cross_fitted_aucs(codes, y, k, half, scored).items():
        if raw is not None:
            auc = max(auc, raw[j], 1 - raw[j])
        best = max(best, (float(auc), j))
    return best


def _one_hot_groups(df: pd.DataFrame, features: list[str]) -> dict[str, list[str]]:
    """0/1 columns sharing a name up to their last separator, two or more per group."""
    groups: dict[str, list[str]] = {}
    for c in features:
        m = re.match(r"^(.+)[_.:=\- ][^_.:=\- ]+$", str(c))
        x = df[c]
        if m and (pd.api.types.is_bool_dtype(x) or x.isin([0, 1]).all()):
            groups.setdefault(m.group(1), []).append(c)
    return {p: cs for p, cs in groups.items() if 2 <= len(cs) <= 30}


def _leaks(df, features, y, classes, names) -> list[str]:
    ok = y >= 0
    k = len(classes)
    if k < 2 or ok.sum() < 2 * MIN_CLASS_FOR_AUC:
        return []
    frame, y = df.loc[ok], y[ok]
    half = np.random.default_rng(0).permutation(len(y)) < len(y) // 2
    where = "" if k == 2 else " (one class against the rest)"
    out, flagged = [], set()
    for c in features:
        auc, j = _leak_score(frame[c], _codes(frame[c]), y, k, half)
        if auc >= LEAK_AUC:
            flagged.add(c)
            cls = "" if k == 2 else f" separates class {_class_name(classes[j], names)} and"
            out.append(f"column {c!r}{cls} predicts the label almost perfectly on its own "
                       f"(AUC {auc:.3f}{where}): likely leakage: {LEAK_WHY}")
    for prefix, cols in _one_hot_groups(frame, features).items():
        if flagged.intersection(cols):
            continue
        bits = frame[cols].to_numpy(dtype=np.int64) @ (np.int64(1) << np.arange(len(cols)))
        codes = pd.factorize(bits)[0] + 1
        auc, j = _leak_score(None, codes, y, k, half)
        if auc >= LEAK_AUC:
            out.append(f"columns {', '.join(map(repr, cols))} (a one-hot group {prefix!r}) "
                       f"predict the label almost perfectly together (AUC {auc:.3f}{where}): "
                       f"likely leakage: {LEAK_WHY}")
    return out
