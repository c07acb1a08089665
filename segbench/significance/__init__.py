"""Confidence intervals and significance tests for segmentation figures, resampling images.

Every evaluation stores per-image counts, an integer array ``counts`` of shape ``(N, 3, K)``:
for each of ``N`` images and ``K`` classes, ``counts[:, 0]`` is the intersection (pixels of
class ``k`` predicted as ``k``), ``counts[:, 1]`` the ground-truth pixels of class ``k`` and
``counts[:, 2]`` the pixels predicted as ``k`` (ignore-index pixels excluded). Several runs
(seeds) of one configuration on the same images stack to ``(R, N, 3, K)``; a 3-D array is one
run. Summing counts over a set of images gives exactly that set's dataset-level figures, and
every figure here comes from :func:`segbench.metrics.metrics_from_counts` applied to summed
counts: a resample is scored like a dataset, never by averaging per-image scores.

Conventions
-----------
* **Statistic.** For a side with ``R`` runs, the statistic of a figure is the mean over the
  runs of each run's dataset-level figure (NaN-aware: a run whose figure is undefined, e.g. a
  per-class IoU with union 0, is left out of that mean; all runs undefined gives NaN).
* **Percentile bootstrap over images** (:func:`bootstrap`). Each of ``resamples`` resamples
  draws ``N`` image indices with replacement, one draw shared by all runs. Resample ``b``'s
  indices are ``rng.integers(0, N, size=N)``, drawn in order ``b = 0, 1, ...`` from
  ``rng = np.random.default_rng(seed)``. The interval is the ``(1 - level) / 2`` and
  ``(1 + level) / 2`` percentiles (numpy's default linear interpolation) of the resampled
  statistic; ``se`` is its standard deviation over resamples (``ddof=1``). Resamples in which a
  figure is undefined are left out of that figure's percentiles and ``se``.
* **Paired comparison** (:func:`paired_comparison`) of A and B on the same images.
  ``delta = statistic(A) - statistic(B)``. Its interval comes from a paired percentile bootstrap:
  the same image draws (the same draws as :func:`bootstrap` with that seed) for both sides and
  all runs. Its p-value comes from a two-sided paired sign-flip (approximate randomization)
  test over images: in each of ``permutations`` permutations every image independently swaps
  A's and B's counts with probability 1/2 (permutation ``p``'s flips are
  ``rng2.integers(0, 2, size=N)``, drawn in order from ``rng2 = np.random.default_rng([seed,
  1])``). Because A and B may have different numbers of runs, the test works on each side's
  counts *averaged over its runs* (float), and its statistic ``T`` is the dataset-level figure
  of A's averaged counts minus B's. With one run per side ``T`` is exactly ``delta``; with
  several runs it is the difference of the figures of the run-averaged counts, which is close to,
  but not the same as, ``delta`` (the mean of per-run figures). ``p = (1 + #{|T*| >= |T_obs| -
  1e-9}) / (1 + permutations)``; a permutation whose statistic is undefined counts as extreme
  (conservative). Per-class IoU p-values are Holm-Bonferroni adjusted (:func:`holm`) across
  the classes whose IoU is defined on both sides.
* **Output.** All public functions return JSON-ready plain Python: floats, ints, lists and
  dicts, with ``None`` for undefined (NaN) values.

Resamples and permutations are vectorised as a ``(chunk, N)`` matrix of image multiplicities
(or 0/1 flips) times the ``(N, runs * 3 * K)`` counts, 256 at a time to bound memory. Counts
are summed in float64, which is exact for integer counts below 2**53. The products run in
torch, not numpy: mixing numpy's OpenBLAS thread pool with torch's (which scores the sums) makes
the two pools contend for the cores and slows the loop several-fold on small machines.
"""

from segbench.significance._resampling import SCALAR_METRICS
from segbench.significance.intervals import bootstrap, check_bootstrap_options, spread
from segbench.significance.paired import holm, paired_comparison

__all__ = [
    "SCALAR_METRICS",
    "bootstrap",
    "check_bootstrap_options",
    "holm",
    "paired_comparison",
    "spread",
]
