"""Robust and optionally differentially private training.

``data`` turns a validated dataset into tensors (spec, split, scaling),
``models`` builds the CNN/MLP from a JSON-able config, ``defenses`` makes
adversarial examples (FGSM-RS, PGD, TRADES), ``privacy`` wraps Opacus,
``trainer`` runs the loop, and ``checkpoint`` saves and loads models as
safetensors plus JSON only (never pickle).
"""
