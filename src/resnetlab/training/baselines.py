"""scikit-learn baselines on a network's own split and preprocessing (``--baselines``).

Fixed, documented settings, tuned on nothing: a linear model on the standardised features
(``LogisticRegression(C=1, max_iter=2000)``, or ``Ridge(alpha=1)`` for regression) and
gradient-boosted trees (``HistGradientBoosting*`` with scikit-learn's defaults and
``random_state=0``). Both fit the network's training rows and are scored on its test rows
(its validation rows without a test split), after the same preprocessing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge

from resnetlab.data.bundle import DataBundle, dataset_tensors
from resnetlab.training.metrics import classification_report, headline, regression_report
from resnetlab.training.rundir import RunDir

LOGISTIC = "logistic regression"
RIDGE = "ridge regression"
BOOSTING = "gradient boosting"
SETTINGS = {
    LOGISTIC: "LogisticRegression(C=1.0, max_iter=2000) on standardised features",
    RIDGE: "Ridge(alpha=1.0) on standardised features",
    BOOSTING: "HistGradientBoosting{Classifier,Regressor}(random_state=0), defaults otherwise",
}


def standardised_arrays(bundle: DataBundle) -> list[np.ndarray]:
    """``[x_train, y_train, x_eval, y_eval]``: features standardised with the training
    statistics (as the engine does), the evaluation split being test, else validation."""
    mean, std = np.asarray(bundle.mean), np.asarray(bundle.std)
    arrays = []
    for split in (bundle.train, bundle.test if bundle.test is not None else bundle.val):
        x, y = dataset_tensors(split)
        arrays += [(x.numpy() - mean) / std, y.numpy()]
    return arrays


def baseline_models(task: str) -> dict[str, Any]:
    """The baselines for ``task``, unfitted, by name."""
    if task == "regression":
        return {RIDGE: Ridge(alpha=1.0), BOOSTING: HistGradientBoostingRegressor(random_state=0)}
    return {
        LOGISTIC: LogisticRegression(C=1.0, max_iter=2000),
        BOOSTING: HistGradientBoostingClassifier(random_state=0),
    }


def fit_baselines(
    bundle: DataBundle, names: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """Each baseline's (or those ``names``) report on the evaluation split, in the network's
    report format (accuracy and confusion matrix, or RMSE/MAE/R² in the target's units)."""
    x_train, y_train, x_eval, y_eval = standardised_arrays(bundle)
    reports = {}
    for name, model in baseline_models(bundle.task).items():
        if names is not None and name not in names:
            continue
        model.fit(x_train, y_train)
        if bundle.task == "regression":
            predicted = torch.from_numpy(model.predict(x_eval))
            reports[name] = regression_report(
                predicted, torch.from_numpy(y_eval), bundle.target_scale
            )
        else:
            probabilities = np.clip(model.predict_proba(x_eval), 1e-12, None)
            logits = torch.from_numpy(np.log(probabilities))
            reports[name] = classification_report(logits, torch.from_numpy(y_eval), bundle.classes)
    return reports


def compare_with_baselines(bundle: DataBundle, network: dict[str, Any], run: RunDir) -> None:
    """Fit the baselines, print their numbers under the network's and write
    ``baselines.json`` (settings, split, every report) to the run folder."""
    reports = fit_baselines(bundle)
    split = network["split"]
    run.print(f"On the same {split} rows ({network['samples']}), same preprocessing:")
    for name, report in {"network": network, **reports}.items():
        run.print(f"  {name:<20} {headline(report)}")
    run.write_json(
        "baselines.json",
        {
            "split": split,
            "network": network,
            "baselines": reports,
            "settings": {name: SETTINGS[name] for name in reports},
        },
    )
