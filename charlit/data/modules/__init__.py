"""Lightning data modules, one per data kind (``data.kind``): ``prompts`` for on-policy methods, ``conversations``
for SFT and distillation, ``pairs`` for DPO. Every one also serves the held-out prompts of the shared validation.

A new kind is one module here registering a :class:`DataModule` subclass with ``@DATA_MODULES.register("<kind>")``
(third parties: the ``charlit.data_kinds`` entry-point group).
"""

from __future__ import annotations

from pathlib import Path

from charlit.data.constitution import Constitution
from charlit.data.modules.base import DATA_MODULES, DataModule, DataSettings


def build_datamodule(
    data_cfg,
    constitution: Constitution,
    tokenizer,
    data_kind: str | tuple[str, ...],
    *,
    seed: int = 0,
    method: str = "?",
    conversation_format: str = "tokens",
    dataset_path: str | Path | None = None,
) -> DataModule:
    """The data module for ``data_cfg`` (the ``data`` group), checked against what the objective consumes.

    ``data_kind`` is the kind the objective trains on, or a tuple of kinds it accepts; ``dataset_path`` is a
    dataset the data pipeline generated for this variant (read in place of ``data.path``).
    """
    kinds = (data_kind,) if isinstance(data_kind, str) else tuple(data_kind)
    kind = data_cfg.kind
    if kind not in kinds:
        raise ValueError(
            f"method={method} trains on {' or '.join(kinds)} but data={data_cfg.get('name', kind)} "
            f"provides {kind}; pick a data config of kind {' or '.join(kinds)} (e.g. data={kinds[0]})."
        )
    return DATA_MODULES.get(kind).from_config(
        data_cfg,
        constitution=constitution,
        tokenizer=tokenizer,
        conversation_format=conversation_format,
        seed=seed,
        dataset_path=dataset_path,
    )


__all__ = ["DATA_MODULES", "DataModule", "DataSettings", "build_datamodule"]
