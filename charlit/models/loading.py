"""Build the policy model and tokenizer from the ``model`` config group."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from charlit.models import bundled, cpu_attention, frozen_casts, onednn
from charlit.models.tiny import TINY_ID, tiny_model

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers causal LM, or a peft model wrapping one
    tokenizer: object
    name_or_path: str
    source_dir: str | None  # the directory weights came from (None for tiny)

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "disable_adapter")


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"model.dtype={name!r} is not supported; choose one of {sorted(_DTYPES)}.") from None


def _resolve_source(name_or_path: str) -> str:
    if name_or_path in bundled.BUNDLED:
        return str(bundled.converted_dir(with_weights=True, model_id=name_or_path))
    return name_or_path


def _from_pretrained(loader, source: str, what: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if Path(source).exists():
            raise ValueError(f"Could not load the {what} from the directory {source!r}: {err}") from err
        raise ValueError(
            f"model.name_or_path={source!r} is neither a local directory nor a model in the Hugging Face cache "
            f"(this machine may have no hub access). Use `model=smollm2_135m` (bundled), `model=tiny`, "
            f"or a local Hugging Face directory."
        ) from err


def load_tokenizer(cfg: DictConfig):
    from transformers import AutoTokenizer

    name = cfg.get("tokenizer") or cfg.name_or_path
    if name == TINY_ID:  # the tiny test model borrows the default's tokenizer
        source = str(bundled.converted_dir(with_weights=False))
    elif name in bundled.BUNDLED:
        source = str(bundled.converted_dir(with_weights=True, model_id=name))  # the model follows
    else:
        source = name
    tokenizer = _from_pretrained(
        AutoTokenizer, source, "tokenizer", trust_remote_code=bool(cfg.get("trust_remote_code", False))
    )
    if cfg.get("chat_template"):
        tokenizer.chat_template = cfg.chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The tokenizer of {name!r} has no chat template; set `model.chat_template` to a Jinja template."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _apply_lora(model, lora: DictConfig):
    from peft import LoraConfig, get_peft_model

    target = lora.get("target_modules", "all-linear")
    config = LoraConfig(
        r=int(lora.r),
        lora_alpha=float(lora.get("alpha", 2 * lora.r)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(target) if not isinstance(target, str) else target,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated property itself; our code does not
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def _onednn_choice(model, setting) -> bool:
    """``model.onednn_linear``: true / false force the path; auto times it on this machine (cached)."""
    if isinstance(setting, bool):
        return setting and onednn.supported(model)
    if str(setting) != "auto":
        raise ValueError(f"model.onednn_linear={setting!r} must be auto, true or false.")
    if not onednn.supported(model):
        return False
    use, record = onednn.calibrate(model)
    if not record["cached"] and record["seconds"]:
        ratio = record["seconds"]["torch"] / max(record["seconds"]["onednn"], 1e-12)
        print(
            f"[charlit] linear layers through {'oneDNN' if use else 'torch default'}: oneDNN measured at {ratio:.2f}x "
            f"torch's default speed on this CPU (calibrated once, cached; model.onednn_linear=true/false forces it)",
            flush=True,
        )
    return use


def load_model(cfg: DictConfig, tokenizer=None, *, apply_lora: bool = True) -> LoadedModel:
    """Load ``cfg.name_or_path`` (``bundled:smollm2-135m-instruct``, ``tiny``, a Hugging Face id or directory)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or load_tokenizer(cfg)
    dtype = resolve_dtype(cfg.get("dtype", "float32"))
    name = str(cfg.name_or_path)
    if name == TINY_ID:
        tiny = cfg.get("tiny") or {}
        model = tiny_model(
            len(tokenizer),
            seed=int(cfg.get("seed", 0)),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=int(tiny.get("hidden_size", 64)),
            num_layers=int(tiny.get("num_layers", 2)),
        ).to(dtype)
        source = None
    else:
        source = _resolve_source(name)
        model = _from_pretrained(
            AutoModelForCausalLM,
            source,
            "model",
            dtype=dtype,
            trust_remote_code=bool(cfg.get("trust_remote_code", False)),
        )
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    cpu_attention.use(model)  # training attention from fp32 copies where this CPU runs that faster under bf16-mixed
    if cfg.get("gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = cfg.get("lora")
    if apply_lora and lora is not None and int(lora.get("r", 0)) > 0:
        model = _apply_lora(model, lora)
    use_onednn = _onednn_choice(model, cfg.get("onednn_linear", "auto"))
    onednn.set_active(model, use_onednn)
    if use_onednn:
        onednn.accelerate(model)  # fp32 CPU products through oneDNN where calibration found it faster
    frozen_casts.cache_frozen_casts(model)  # under bf16-mixed a frozen weight is cast to bf16 once, not every forward
    return LoadedModel(model=model, tokenizer=tokenizer, name_or_path=name, source_dir=source)
