"""Poisoning screens: find poisoned rows before training and backdoors after it (a library).

Each data screen takes the rows that passed validation and returns a
:class:`~aegis.screens.result.ScreenResult`; the validate step turns its
flagged rows into quarantine reasons. Like :mod:`aegis.train`, this package
knows nothing of the workspace, the ledger or the registry.
"""
