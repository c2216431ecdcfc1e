"""What starts a retrain by itself: arrivals of signed datasets, schedules, and who ran it.

``arrivals`` lists the watched sources and decides which deliveries are new
and complete; ``record`` is the trigger a run records (event, schedule or a
person). Emitting events and reading them back is Prefect's part
(``tasks/triggers.py``); the core only decides.
"""
