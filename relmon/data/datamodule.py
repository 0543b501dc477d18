"""The Lightning DataModule of a stream (:class:`StreamDataModule`), made on first use so that
importing relmon's data modules (and the job's plain runner) does not import pytorch_lightning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from relmon.data.batching import _check_loader_args, _loader, collate_skip_bad
from relmon.data.windows import window_subset


def _make_stream_datamodule() -> type:
    import pytorch_lightning as pl

    class StreamDataModule(pl.LightningDataModule):
        """Serve a stream (or a :class:`~torch.utils.data.Subset` of one) to ``Trainer.predict``/``validate``.

        Order is deterministic (no shuffling); under DDP Lightning adds its own distributed sampler.
        ``window_id`` restricts the loaders to one window of the stream. Batches are made by
        :func:`collate_skip_bad`; the loaders are those of :func:`stream_loader`.
        """

        def __init__(
            self,
            stream: Dataset,
            batch_size: int = 32,
            num_workers: int = 0,
            *,
            window_id: str | None = None,
            collate_fn: Callable[[list], Any] = collate_skip_bad,
            pin_memory: bool = False,
        ):
            super().__init__()
            _check_loader_args(batch_size, num_workers)
            self.stream = window_subset(stream, window_id)
            self.batch_size = batch_size
            self.num_workers = num_workers
            self.collate_fn = collate_fn
            self.pin_memory = pin_memory

        def _loader(self) -> DataLoader:
            return _loader(self.stream, self.batch_size, self.num_workers, self.collate_fn, self.pin_memory)

        def predict_dataloader(self) -> DataLoader:
            return self._loader()

        def val_dataloader(self) -> DataLoader:
            return self._loader()

        def test_dataloader(self) -> DataLoader:
            return self._loader()

    StreamDataModule.__module__ = __name__
    StreamDataModule.__qualname__ = "StreamDataModule"
    return StreamDataModule


def __getattr__(name: str):
    # StreamDataModule is a LightningDataModule: made on first use, so that importing this module (and
    # the job's plain runner, which uses stream_loader) does not import pytorch_lightning.
    if name == "StreamDataModule":
        cls = globals().get("_STREAM_DATAMODULE")
        if cls is None:
            cls = globals()["_STREAM_DATAMODULE"] = _make_stream_datamodule()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
