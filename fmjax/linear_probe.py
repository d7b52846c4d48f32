"""A linear probe: multinomial logistic regression with an L2 penalty on frozen features.

Features are standardised with the training set's mean and standard deviation (so that one
penalty suits every model's scale, and L-BFGS is well conditioned), then scikit-learn's
L-BFGS fits softmax weights minimising

    mean cross-entropy over the training set + l2 / 2 * ||W||^2      (the biases are not penalised)

Deterministic: the same features give the same weights and the same accuracy.
"""

import dataclasses

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits  # installed with scikit-learn

MAX_ITERATIONS = 1000


@dataclasses.dataclass(frozen=True)
class ProbeScore:
  accuracy: float     # on the held-out set
  majority: float     # held-out accuracy of always answering the training set's commonest class
  train_accuracy: float


def standardise(train_NxD: np.ndarray, test_MxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mean_D = train_NxD.mean(0)
  # A constant feature (a random model's dead unit) stays 0 rather than becoming NaN.
  std_D = np.maximum(train_NxD.std(0), 1e-6)
  return (train_NxD - mean_D) / std_D, (test_MxD - mean_D) / std_D


def majority_accuracy(train_labels_N: np.ndarray, test_labels_M: np.ndarray) -> float:
  classes, counts = np.unique(train_labels_N, return_counts=True)
  commonest = classes[np.argmax(counts)]  # ties: the smallest label, as argmax takes the first
  return float(np.mean(test_labels_M == commonest))


def fit_and_score(train_NxD: np.ndarray, train_labels_N: np.ndarray, test_MxD: np.ndarray,
                  test_labels_M: np.ndarray, *, l2: float) -> ProbeScore:
  train_NxD, test_MxD = standardise(np.asarray(train_NxD, np.float64), np.asarray(test_MxD, np.float64))
  # scikit-learn minimises C * sum(cross-entropy) + ||W||^2 / 2: C = 1 / (l2 * N) is the objective above.
  classifier = LogisticRegression(C=1.0 / (l2 * len(train_NxD)), max_iter=MAX_ITERATIONS)
  # One BLAS thread: the matrices are small, and on a busy 2-core machine OpenBLAS's threads
  # waiting on each other made the fit 50x slower (7.5 s instead of 0.13 s for 2,400 x 128).
  with threadpool_limits(limits=1, user_api="blas"):
    classifier.fit(train_NxD, train_labels_N)
  return ProbeScore(accuracy=float(np.mean(classifier.predict(test_MxD) == test_labels_M)),
                    majority=majority_accuracy(train_labels_N, test_labels_M),
                    train_accuracy=float(np.mean(classifier.predict(train_NxD) == train_labels_N)))
