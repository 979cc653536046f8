"""Prompts only, for on-policy methods: the union of ``data.train_sets`` (``constitution`` = the persona's own
questions; bundled set names or .jsonl files), or with ``data.robust`` set (``data=robust``) a mix of those
questions with format-shifted, multi-turn and attacked prompts (:mod:`charlit.data.robust`)."""

from __future__ import annotations

from dataclasses import dataclass

from charlit.data.modules.base import DATA_MODULES, IGNORED_KEYS, DataModule, DataSettings
from charlit.data.prompts import heldout_prompts, training_prompts
from charlit.data.robust import RobustSettings, robust_prompts
from charlit.settings import parse, setting


@dataclass
class PromptSettings(DataSettings):
    train_sets: list[str] = setting(["constitution", "general_train"], help="'constitution', bundled names or .jsonl")
    batch_size: int = setting(8, gt=0, help="the global training batch (split over data-parallel ranks)")
    robust: dict | None = setting(None, help="the robust prompt mix (data=robust); null = plain questions only")

    def check(self, prefix: str) -> None:
        if self.robust is not None:  # checked with the other settings, before any model loads
            parse(RobustSettings, self.robust, f"{prefix}.robust", ignore=())


@DATA_MODULES.register("prompts")
class PromptData(DataModule):
    Settings = PromptSettings  # parsed by from_config, and by charlit.run.check_settings before any model loads
    empty_message = "The training prompt set is empty; check data.train_sets."

    @classmethod
    def from_config(cls, data_cfg, *, constitution, tokenizer, conversation_format, seed, dataset_path=None):
        if dataset_path is not None:
            raise ValueError(
                f"data={data_cfg.get('name', 'prompts')} is of kind prompts, which reads data.train_sets, "
                f"not a generated dataset ({dataset_path}); remove its data.generate block."
            )
        settings = parse(cls.Settings, data_cfg, "data", ignore=IGNORED_KEYS)
        train = training_prompts(settings.train_sets, constitution)
        heldout = heldout_prompts(settings.heldout_set, settings.val_size, train)
        if settings.robust is not None:
            train = robust_prompts(train, parse(RobustSettings, settings.robust, "data.robust", ignore=()), seed)
        return cls(train, heldout, settings, seed)
