"""How a trained model predicts: whole image, sliding window, multi-scale + flip
(:mod:`~segbench.inference.modes`), and the dense CRF post-processing of DeepLab v1
(:mod:`~segbench.inference.crf`, on the permutohedral lattice of
:mod:`~segbench.inference.permutohedral`). Bayesian SegNet's Monte Carlo dropout runs inside
the model's own forward pass; the modes average its uncertainty like the scores."""

from segbench.inference.modes import MODES, Inference, eval_mode, evaluating, sliding_windows

__all__ = ["MODES", "Inference", "eval_mode", "evaluating", "sliding_windows"]
