"""What every data module shares: the registry of data kinds, the settings every kind has, the training loader
(global batches, exact resume) and the held-out validation prompts.

A data kind is a :class:`DataModule` subclass registered with ``@DATA_MODULES.register("<kind>")`` in a module of
this package (or a third party's ``charlit.data_kinds`` entry point) and built by its ``from_config`` classmethod.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
from torch.utils.data import DataLoader

from charlit.data.loader import train_loader
from charlit.models.sequences import right_pad
from charlit.registry import Registry
from charlit.settings import setting

DATA_MODULES: Registry[type[DataModule]] = Registry(
    "data kind", "charlit.data.modules", "charlit.data_kinds", "data.kind"
)
IGNORED_KEYS = ("name", "kind", "generate")  # the variant's name and kind, and the data pipeline's block


@dataclass
class DataSettings:
    """The settings of every data kind (``data.*``): batches and the held-out validation prompts."""

    heldout_set: str = setting("general_heldout", help="bundled prompt set or .jsonl file, screened against training")
    val_size: int = setting(16, ge=0, help="held-out prompts used by val/*")
    batch_size: int = setting(4, gt=0, help="the global training batch (split over data-parallel ranks)")
    val_batch_size: int = setting(16, gt=0)


def as_list(batch: list) -> list:
    """Items served as a plain list; the objective packs them."""
    return batch


def collate_tokens(items: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """``(input ids, labels)`` pairs as right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 padding)."""
    input_ids, attention = right_pad([ids for ids, _ in items], pad_id)
    labels, _ = right_pad([labels for _, labels in items], -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class DataModule(L.LightningDataModule):
    """Training ``items`` in global batches (``collate`` makes a batch of a list of them) and the held-out prompts,
    served as lists, for the shared validation. ``empty_message`` says what to check when there are no items."""

    empty_message = "No training items; check the data config."

    def __init__(
        self,
        items: list,
        heldout: list[str],
        settings: DataSettings,
        seed: int = 0,
        collate: Callable[[list], object] = as_list,
    ):
        super().__init__()
        if not items:
            raise ValueError(self.empty_message)
        self.items, self.heldout, self.settings, self.seed, self.collate = items, heldout, settings, seed, collate

    @classmethod
    def from_config(
        cls, data_cfg, *, constitution, tokenizer, conversation_format: str, seed: int, dataset_path=None
    ) -> DataModule:
        """The data module ``data_cfg`` (the ``data`` group) describes; ``dataset_path``: a generated dataset to
        read in place of ``data.path``."""
        raise NotImplementedError(f"data kind {cls.__name__} does not implement from_config.")

    def train_dataloader(self):
        return train_loader(self.items, self.settings.batch_size, self.seed, self.collate, self.trainer)

    def val_dataloader(self):
        return DataLoader(self.heldout, batch_size=self.settings.val_batch_size, shuffle=False, collate_fn=as_list)
