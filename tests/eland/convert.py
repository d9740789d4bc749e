"""Ground truth for the stand-in's evaluator, written by no one on this project.

Trains small XGBoost and scikit-learn models on a fixed seed, converts each with eland (Elastic's
own converter, `eland.ml.transformers.get_model_transformer`) into Elasticsearch's trained-model
format, and prints one JSON object: per model the PUT body and a few hundred documents with the
probability of class "1" the source library computes for each.

Caveats (../shared/domain/real-stack.md): eland 9.2 drops XGBoost's `base_score`, so XGBoost is
trained with base_score=0.5; eland writes float32 thresholds as 9-digit decimals, so every input
is an exact binary fraction (a multiple of 1/64) and cannot fall between the two readings.

scikit-learn forests: Elasticsearch's `weighted_mode` aggregate over multi-valued leaves is
softmax(sum over trees of the leaf values) (WeightedMode.processValues), and eland stores each
leaf as log(class fraction) (-1e7 for 0). That is sklearn's predict_proba for one tree, and for a
forest the normalised product of its trees' predict_proba, which this script computes from
sklearn's own per-tree predict_proba. Forest documents have no missing values: eland does not
carry sklearn's learned missing-value direction (tree_.missing_go_to_left), so a missing value
goes where Elasticsearch's default sends it, which sklearn does not reproduce.
"""

import json
import sys

import numpy as np
import xgboost
from eland.ml.transformers import get_model_transformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

RNG = np.random.default_rng(20260706)
N_FEATURES = 6
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def data(n, missing):
    x = RNG.integers(-256, 256, size=(n, N_FEATURES)) / 64.0
    y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2] - x[:, 3] + RNG.normal(0, 1, n)) > 0).astype(int)
    if missing:
        x[RNG.random(x.shape) < missing] = np.nan
    return x, y


def docs(x):
    return [
        {name: float(v) for name, v in zip(FEATURES, row) if not np.isnan(v)}
        for row in x
    ]


def body(model):
    t = get_model_transformer(model, feature_names=FEATURES, classification_labels=["0", "1"])
    return {
        "input": {"field_names": FEATURES},
        "inference_config": {"classification": {"num_top_classes": 2}},
        "compressed_definition": t.transform().serialize_and_compress_model(),
    }


def forest_probability(forest, x):
    logs = np.zeros((len(x), 2))
    for tree in forest.estimators_:
        p = tree.predict_proba(x)
        logs += np.where(p > 0, np.log(np.where(p > 0, p, 1)), -10000000.0)
    e = np.exp(logs - logs.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True))[:, 1]


out = []
x_train, y_train = data(2000, 0.1)
for trees, depth in [(40, 4), (300, 3)]:
    m = xgboost.XGBClassifier(n_estimators=trees, max_depth=depth, base_score=0.5, random_state=1)
    m.fit(x_train, y_train)
    x, _ = data(300, 0.1)
    out.append({"name": f"xgboost-{trees}-trees", "model": body(m), "docs": docs(x),
                "p1": m.predict_proba(x)[:, 1].tolist()})

x_train, y_train = data(2000, 0.0)
x, _ = data(300, 0.0)
tree = DecisionTreeClassifier(max_depth=6, random_state=1).fit(x_train, y_train)
out.append({"name": "sklearn-decision-tree", "model": body(tree), "docs": docs(x),
            "p1": tree.predict_proba(x)[:, 1].tolist()})
one = RandomForestClassifier(n_estimators=1, max_depth=6, random_state=1).fit(x_train, y_train)
out.append({"name": "sklearn-forest-1-tree", "model": body(one), "docs": docs(x),
            "p1": one.predict_proba(x)[:, 1].tolist()})
forest = RandomForestClassifier(n_estimators=25, max_depth=5, min_samples_leaf=20,
                                random_state=1).fit(x_train, y_train)
out.append({"name": "sklearn-forest-25-trees", "model": body(forest), "docs": docs(x),
            "p1": forest_probability(forest, x).tolist()})

json.dump(out, sys.stdout)
