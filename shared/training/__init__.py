"""Training and using classifiers: one DP-SGD engine and the jobs built on it.

* ``engine``: :class:`DPTrainer`, the one DP-SGD engine (Opacus clipping and noise, Poisson
  sampling at per-record rates), and :func:`poisson_schedule`, the priced schedule.
* ``table`` / ``images``: the DP-SGD job kinds on tables and on images.
* ``distributed``: data-parallel DP-SGD over several processes/GPUs (Opacus DPDDP; launcher).
* ``split``: the per-record train/test split; ``preprocess``: public per-record input maps.
* ``models`` / ``backbones``: the classifiers and frozen feature extractors.
* ``results``: rebuild a released model and predict; ``serialise``: model states as bytes;
  ``federated``: averaging released states; ``metrics``: exact metrics (never released);
  ``device``: the default device.

The names below are re-exported for short import lines; modules inside this package import
from the precise module instead.
"""
from .engine import DPTrainer, poisson_schedule
from .models import build_from_config, build_model, model_config
from .preprocess import (bounds_scale, declared_bounds, encode_labels, feature_columns, preprocess,
                         public_scale, row_l2_normalise, table_preprocessing)
from .results import load_model, predict, predict_proba
from .serialise import dump_state, load_state
from .split import record_bytes, record_side, split_indices
from .table import table_xy, train_dpsgd_table

__all__ = ["DPTrainer", "bounds_scale", "build_from_config", "build_model", "declared_bounds",
           "dump_state", "encode_labels",
           "feature_columns", "load_model", "load_state", "model_config", "poisson_schedule",
           "predict", "predict_proba", "preprocess", "public_scale", "record_bytes",
           "record_side", "row_l2_normalise", "split_indices", "table_preprocessing", "table_xy",
           "train_dpsgd_table"]
