"""Honest evaluation of a trained model: strong and independent attacks, calibration, privacy.

Modules, one job each:

- ``attacks``: our white-box PGD and wrappers over the Adversarial Robustness Toolbox
  (APGD-CE, APGD-T, Square), each returning per-sample correctness.
- ``gradients``: input-gradient statistics that reveal gradient masking.
- ``robustness``: runs the attacks and folds them into a ``RobustnessReport`` with flags.
- ``calibration``: expected calibration error and reliability-diagram data.
- ``privacy_audit``: loss-threshold membership inference (ROC AUC, TPR at 1 % FPR).
- ``report``: a self-contained HTML report with embedded plots.
- ``evaluate``: ``evaluate_model``, the entry point, and its ``EvaluationResult``.
"""
