"""
CaFE (Han, Kim & Kwak 2025; method.md §9): what makes an SAE feature fire. [`explain_feature`] attributes one
feature's activation at one token to the input patches (its iERF) with any §8 back-end; [`feature_insertion`] scores
patch rankings by how fast inserting their patches into the mean-filled image brings the activation back;
[`neighbourhood_share`] flags non-local activations.
"""

from .explain import BACKENDS, FeatureExplanation, explain_feature
from .insertion import FeatureInsertionOutput, feature_insertion, random_ranking
from .locality import NON_LOCAL_THRESHOLD, Locality, neighbourhood_share, verdict

__all__ = [
    "BACKENDS",
    "NON_LOCAL_THRESHOLD",
    "FeatureExplanation",
    "FeatureInsertionOutput",
    "Locality",
    "explain_feature",
    "feature_insertion",
    "neighbourhood_share",
    "random_ranking",
    "verdict",
]
