"""A KV-cached decoding forward for Llama-architecture models on the CPU, with fused projections.

A decoding step of a small model on a CPU is bound by two things the Hugging Face forward cannot help: reading every
weight once per token (memory bandwidth) and the Python and dispatch work around ~20 small ops per layer. Measured on
an Intel Xeon with AMX (2 cores), SmolLM2-135M at batch 4 spent ~44 ms a token from bf16 weights, of which ~19 ms
in the products and the rest around them. This forward does the same arithmetic with fewer, larger calls: q, k and
v are one product from a concatenated weight, gate and up another, the KV cache is one preallocated tensor per layer
written in place, attention is one ``scaled_dot_product_attention`` call with grouped heads, and only the last
position reaches the lm_head. Norms and rotary embeddings are the model's own modules (so any rope scaling it has
applies) with transformers' rotation, in fp32 like the sampling arithmetic; the products run at the weights'
``dtype`` (fp32, or bf16 copies for ``sampler.precision=bf16``), fp32 in and out, like
:class:`charlit.sampling.precision.Bf16Linear`. With ``packed`` the weights are reordered once per copy into oneDNN's
blocked layout, so that no product re-blocks its weight on every call (decoding's few rows make that re-blocking a
large share of a product: on the Intel Xeon with AMX, SmolLM2's body products at 4 rows took 12.2 ms a token from
packed bf16 weights against 18.7 ms plain); whether it pays is timed, with the precision, by :func:`calibrate`.

Built from the model's current weights with plain LoRA adapters merged in (``W + ΔW`` written straight into the fused
copy); the model's own weights are never touched. :func:`supports` names the configurations it reproduces (tested
against the Hugging Face forward); anything else decodes through the model itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from charlit.models.heads import _unwrap
from charlit.models.lora_merge import plain_lora_layers

MODEL_TYPES = ("llama",)
CALIBRATION_ROWS, CALIBRATION_PROMPT, CALIBRATION_STEPS = 4, 16, 8  # a decoding batch, a short prompt, a few tokens


def supports(model) -> bool:
    """A Llama-family transformers model (or a peft wrapper of one) on the CPU whose forward this reproduces."""
    core = _unwrap(model)
    config = getattr(core, "config", None)
    param = next(core.parameters(), None)
    return (
        config is not None
        and param is not None
        and param.device.type == "cpu"
        and getattr(config, "model_type", None) in MODEL_TYPES
        and getattr(config, "hidden_act", None) == "silu"
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "pretraining_tp", 1) == 1
        and hasattr(core, "model")
        and hasattr(core.model, "rotary_emb")
        and _adapters_readable(model)
    )


def _adapters_readable(model) -> bool:
    """Whether the effective weights can be read: no adapters, adapters all disabled, or plain LoRA (not DoRA-style
    variants, not already merged: those decode through the model itself)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return True
    tuners = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return not tuners or all(m.disable_adapters for m in tuners) or bool(plain_lora_layers(model))


def _weight(module, adapters: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A projection's effective weight ``W + ΔW`` (``adapters``: LoRA layer → its active adapter names) and bias."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    weight = base.weight.detach()
    for name in adapters.get(module, ()):
        weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, None if base.bias is None else base.bias.detach()


def packing_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear (x86 CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _fused(modules, dtype: torch.dtype, adapters: dict, packed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The modules' effective weights stacked along the output dimension into one ``dtype`` tensor (and biases),
    in oneDNN's blocked layout with ``packed``."""
    parts = [_weight(m, adapters) for m in modules]
    weight = torch.empty((sum(w.shape[0] for w, _ in parts), parts[0][0].shape[1]), dtype=dtype)
    row = 0
    for w, _ in parts:
        weight[row : row + w.shape[0]].copy_(w)
        row += w.shape[0]
    if packed:
        weight = torch.ops.mkldnn._reorder_linear_weight(weight, CALIBRATION_ROWS)
    if all(b is None for _, b in parts):
        return weight, None
    return weight, torch.cat([w.new_zeros(w.shape[0]) if b is None else b for w, b in parts]).to(dtype)


class _Layer:
    def __init__(self, layer, dtype: torch.dtype, adapters: dict, packed: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv, self.qkv_bias = _fused((attn.q_proj, attn.k_proj, attn.v_proj), dtype, adapters, packed)
        self.o, self.o_bias = _fused((attn.o_proj,), dtype, adapters, packed)
        self.gate_up, _ = _fused((mlp.gate_proj, mlp.up_proj), dtype, adapters, packed)
        self.down, _ = _fused((mlp.down_proj,), dtype, adapters, packed)
        self.norm_in, self.norm_post = layer.input_layernorm, layer.post_attention_layernorm


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class FusedLlama:
    """Llama decoding with fused projections at ``dtype``; :meth:`kv_forward` gives the loop its cached forward.
    ``linear`` is the product for plain weights; ``packed`` takes oneDNN's prepacked weights instead."""

    def __init__(self, model, dtype: torch.dtype = torch.float32, linear: Callable = F.linear, packed: bool = False):
        if not supports(model):
            raise ValueError(f"FusedLlama reproduces {MODEL_TYPES} models on the CPU; got {type(_unwrap(model))}.")
        if packed and not packing_available():
            raise ValueError("FusedLlama(packed=True) needs oneDNN's prepacked linear, which this torch build lacks.")
        core = _unwrap(model)
        config = core.config
        self.dtype, self.packed = dtype, packed
        self._linear = _packed_linear if packed else linear
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        adapters = dict(plain_lora_layers(model))
        with torch.no_grad():
            self.layers = [_Layer(layer, dtype, adapters, packed) for layer in core.model.layers]
            self.embed = core.model.embed_tokens.weight.detach()
            self.norm = core.model.norm
            self.lm_head, _ = _fused((core.get_output_embeddings(),), dtype, adapters, packed)
        self.rotary = core.model.rotary_emb

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._linear(x.to(self.dtype), weight, bias).to(x.dtype)

    def kv_forward(self, slots: int) -> _CachedForward:
        return _CachedForward(self, slots)


class _CachedForward:
    """``(input_ids [B, T], mask [B, slots], positions [B, T], start) -> fp32 logits [B, V]`` of the last position,
    the new tokens' keys and values written to cache slots ``start .. start+T``."""

    def __init__(self, decoder: FusedLlama, slots: int):
        self.decoder, self.slots, self.cache = decoder, slots, None

    @torch.no_grad()
    def __call__(self, input_ids, mask, positions, start: int) -> torch.Tensor:
        d = self.decoder
        batch, new = input_ids.shape
        if self.cache is None:
            shape = (len(d.layers), 2, batch, d.kv_heads, self.slots, d.head_dim)
            self.cache = torch.zeros(shape, dtype=torch.float32)
        end = start + new
        h = F.embedding(input_ids, d.embed)
        cos, sin = d.rotary(h, positions)
        # key s is visible to query t when it is unmasked and not after it; a query always sees itself, so the
        # left padding's rows stay finite (their outputs are never read)
        slot, query = torch.arange(end), start + torch.arange(new)
        own = slot[None, :] == query[:, None]
        visible = ((mask[:, None, :end].bool() & (slot[None, :] <= query[:, None])) | own)[:, None]  # [B, 1, T, end]
        q_size, kv_size = d.heads * d.head_dim, d.kv_heads * d.head_dim
        for i, layer in enumerate(d.layers):
            qkv = d.linear(layer.norm_in(h), layer.qkv, layer.qkv_bias)
            q = qkv[..., :q_size].view(batch, new, d.heads, d.head_dim).transpose(1, 2)
            k = qkv[..., q_size : q_size + kv_size].view(batch, new, d.kv_heads, d.head_dim).transpose(1, 2)
            v = qkv[..., q_size + kv_size :].view(batch, new, d.kv_heads, d.head_dim).transpose(1, 2)
            keys, values = self.cache[i, 0], self.cache[i, 1]
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            attended = F.scaled_dot_product_attention(
                q,
                keys[:, :, :end],
                values[:, :, :end],
                attn_mask=visible,
                scale=d.head_dim**-0.5,
                enable_gqa=d.heads != d.kv_heads,
            )
            h = h + d.linear(attended.transpose(1, 2).reshape(batch, new, q_size), layer.o, layer.o_bias)
            gate, up = d.linear(layer.norm_post(h), layer.gate_up, None).chunk(2, dim=-1)
            h = h + d.linear(F.silu(gate) * up, layer.down, None)
        return d.linear(d.norm(h[:, -1]), d.lm_head, None).float()


def calibrate(model, linear: Callable = F.linear, path=None) -> tuple[str, dict]:
    """``(choice, record)``: time real decoding through this forward (a 16-token prompt then 8 tokens, 4 rows) from
    fp32 weights (through ``linear``), from bf16 copies, and from oneDNN-packed copies of each where torch has them
    (``fp32-packed``, ``bf16-packed``); ``choice`` is the fastest, plain fp32 unless another is more than 10 % faster.
    Whole decoding steps, not single products: at decoding's few rows the products are bound by reading the weights
    from memory, which a product timed alone (its weight warm in cache) does not show. :func:`choose` reads the
    record for a precision the user forced."""
    from charlit.calibration import calibrated_choice

    config = _unwrap(model).config
    slots = CALIBRATION_PROMPT + CALIBRATION_STEPS
    ids = torch.randint(
        0, config.vocab_size, (CALIBRATION_ROWS, CALIBRATION_PROMPT), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones(CALIBRATION_ROWS, slots, dtype=torch.long)
    positions = torch.arange(slots).expand(CALIBRATION_ROWS, -1)

    def run(dtype: torch.dtype, product: Callable, packed: bool) -> Callable[[], None]:
        built: list[FusedLlama] = []  # built at the untimed warm-up call, and only when the cache has no answer

        def go() -> None:
            if not built:
                built.append(FusedLlama(model, dtype, product, packed))
            forward = built[0].kv_forward(slots)
            forward(ids, mask, positions[:, :CALIBRATION_PROMPT], 0)
            for step in range(CALIBRATION_PROMPT, slots):
                forward(ids[:, -1:], mask, positions[:, step : step + 1], step)

        return go

    candidates = {"fp32": run(torch.float32, linear, False), "bf16": run(torch.bfloat16, F.linear, False)}
    if packing_available():
        candidates["fp32-packed"] = run(torch.float32, linear, True)
        candidates["bf16-packed"] = run(torch.bfloat16, F.linear, True)
    shapes = {
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "layers": config.num_hidden_layers,
        "heads": [config.num_attention_heads, config.num_key_value_heads],
        "vocab": config.vocab_size,
        "rows": CALIBRATION_ROWS,
        "fp32": linear.__module__,
    }
    return calibrated_choice("fused_decode", shapes, candidates, default="fp32", margin=0.1, repeats=3, path=path)


def choose(record: dict, precision: str | None = None) -> tuple[str, bool]:
    """``(precision, packed)`` from a :func:`calibrate` record: its choice, or with ``precision`` forced, whether
    that precision's packed weights measured more than 5 % faster than its plain ones."""
    if precision is None:
        choice = record["choice"]
        return choice.removesuffix("-packed"), choice.endswith("-packed") and packing_available()
    seconds = record.get("seconds", {})
    packed = seconds.get(f"{precision}-packed")
    faster = packed is not None and precision in seconds and packed < seconds[precision] * 0.95
    return precision, faster and packing_available()
