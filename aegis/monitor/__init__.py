"""The production monitor: signed prediction-log windows tested against each release's
calibrated reference; incidents on the audit log (see ``run`` for what a pass may do)."""
