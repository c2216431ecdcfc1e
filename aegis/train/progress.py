"""Training progress: a rich bar per epoch on a terminal, a callback, or nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EpochCallback = Callable[[dict[str, Any]], None]


class Progress:
    """Reports batches and epochs; the base class reports nothing."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, epoch: int, batches: int) -> None:
        """An epoch of about ``batches`` batches begins."""

    def batch(self, loss: float, acc: float) -> None:
        """A batch is done; ``loss``/``acc`` are the epoch's running means."""

    def end(self, record: dict[str, Any]) -> None:
        """An epoch is done (``record`` is its history entry)."""


class CallbackProgress(Progress):
    """Hands each epoch's record to a callback."""

    def __init__(self, callback: EpochCallback) -> None:
        self._callback = callback

    def end(self, record: dict[str, Any]) -> None:
        self._callback(record)


class RichProgress(Progress):
    """One rich progress bar per epoch, on stderr, with loss and accuracy."""

    def __init__(self, epochs: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichBars

        self._epochs = epochs
        self._bars = RichBars(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = None

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def start(self, epoch: int, batches: int) -> None:
        self._task = self._bars.add_task(
            "", total=batches, epoch=f"{epoch}/{self._epochs}", stats=""
        )

    def batch(self, loss: float, acc: float) -> None:
        self._bars.update(self._task, advance=1, stats=f"loss {loss:.4f} acc {acc:.3f}")

    def end(self, record: dict[str, Any]) -> None:
        stats = f"loss {record['train_loss']:.4f} acc {record['train_acc']:.3f}"
        if record.get("val_loss") is not None:
            stats += f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.3f}"
        self._bars.update(self._task, stats=stats)


def progress_for(callback: EpochCallback | None, *, epochs: int) -> Progress:
    """The callback when given, else bars when stderr is a terminal, else nothing."""
    if callback is not None:
        return CallbackProgress(callback)
    from rich.console import Console

    return RichProgress(epochs) if Console(stderr=True).is_terminal else Progress()
