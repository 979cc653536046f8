"""A KV-cached decoding forward for Llama-architecture models on the CPU, with fused projections.

A decoding step of a small model on a CPU is bound by two things the Hugging Face forward cannot help: reading every
weight once per token (memory bandwidth) and the Python and dispatch work around ~20 small ops per layer. Measured on
an Intel Xeon with AMX (2 cores), SmolLM2-135M at batch 4 spent ~44 ms a token from bf16 weights, of which ~19 ms
in the products and the rest around them. This forward does the same arithmetic with fewer, larger calls: q, k and
v are one product from a concatenated weight, gate and up another, the KV cache is one preallocated tensor per layer
written in place, attention is one ``scaled_dot_product_attention`` call with grouped heads, and only the last
position reaches the lm_head. Rotary embeddings are the model's own module (so any rope scaling it has applies)
with transformers' rotation, and RMSNorm one ``rms_norm`` call with the model's weight and epsilon, in fp32 like the
sampling arithmetic; the products run at the weights' ``dtype`` (fp32, or bf16 copies for
``sampler.precision=bf16``) from fp32 inputs, their bf16 outputs promoted exactly by the fp32 ops that read them.
With ``packed`` the weights are reordered into oneDNN's blocked layout, so that no product re-blocks its weight on
every call (decoding's few rows make that re-blocking a large share of a product: on the Intel Xeon with AMX,
SmolLM2's body products at 4 rows took 12.2 ms a token from packed bf16 weights against 18.7 ms plain); whether it
pays is timed, with the precision, by :func:`calibrate`.

The base weights are copied once to bf16 (for bf16 decoding) and kept while they are unchanged (a LoRA run never
changes them); at every decoding call the plain LoRA adapters, as the model has them then, are merged over that copy
(or over the model's own weights in fp32) with one ``addmm`` per term (``W + scaling · B A``) and the result packed.
Building the whole copy each call cost 0.25 s for SmolLM2 in packed bf16, an eighth of decoding 64 tokens; running
the adapters beside the products as low-rank terms cost as much again, in reads of their factors every token. The
model's own weights are never touched.
:func:`supports` names the configurations it reproduces (tested against the Hugging Face forward); anything else
decodes through the model itself.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

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
    variants, not already merged, no bias on B: those decode through the model itself)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return True
    tuners = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not tuners or all(m.disable_adapters for m in tuners):
        return True
    layers = plain_lora_layers(model)  # and each a plain x A^T B^T term: no transposed base, no bias on B
    return bool(layers) and not any(
        getattr(m, "fan_in_fan_out", False) or any(getattr(m, "lora_bias", {}).get(a) for a in names)
        for m, names in layers
    )


def packing_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear (x86 CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _base(module) -> torch.nn.Module:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


class _Projection:
    """One fused product over its modules' weights stacked along the output dimension. :meth:`merge` writes the base
    weights plus the active LoRA terms into :attr:`weight`, the tensor the products read (oneDNN's blocked layout with
    ``packed``). A copy of the base weights at ``dtype`` is kept while the model's weights are unchanged
    (:meth:`current`) when ``dtype`` is narrower than theirs (reading bf16 costs half of fp32's bytes); at their own
    precision the merge reads the model's weights themselves, and no copy is held."""

    def __init__(self, modules, dtype: torch.dtype, packed: bool):
        self.modules, self.dtype, self.packed = modules, dtype, packed
        self.sources = [_base(m).weight for m in modules]
        self.versions = [w._version for w in self.sources]
        self.shape = (sum(w.shape[0] for w in self.sources), self.sources[0].shape[1])  # the stacked [out, in]
        self.base = None if all(w.dtype == dtype for w in self.sources) else self._stacked()
        biases = [_base(m).bias for m in modules]
        self.bias = None
        if any(b is not None for b in biases):
            parts = [w.new_zeros(w.shape[0]) if b is None else b.detach() for w, b in zip(self.sources, biases)]
            self.bias = torch.cat(parts).to(dtype)
        self._plain: torch.Tensor | None = None  # the base weights as the products read them, made once
        self.weight: torch.Tensor | None = None

    def _stacked(self) -> torch.Tensor:
        stacked = torch.empty(self.shape, dtype=self.dtype)
        row = 0
        for w in self.sources:
            stacked[row : row + w.shape[0]].copy_(w.detach())
            row += w.shape[0]
        return stacked

    def current(self) -> bool:
        """Whether the model still holds the weights this projection was made from, unmodified."""
        return all(
            _base(m).weight is w and w._version == v for m, w, v in zip(self.modules, self.sources, self.versions)
        )

    def merge(self, adapters: dict) -> None:
        """:attr:`weight` = the base plus each module's active LoRA terms ``scaling · B A`` (``adapters``: LoRA layer →
        its active adapter names), one ``addmm`` per term into a fresh tensor (neither the base copy nor the model's
        weights are written)."""
        if not any(adapters.get(m) for m in self.modules):
            if self._plain is None:
                self._plain = self._layout(self._stacked() if self.base is None else self.base)
            self.weight = self._plain
            return
        merged = torch.empty(self.shape, dtype=self.dtype)
        row = 0
        for module, w in zip(self.modules, self.sources):
            rows = slice(row, row + w.shape[0])
            source = w.detach() if self.base is None else self.base[rows]
            names = adapters.get(module, ())
            if not names:
                merged[rows].copy_(source)
            for i, name in enumerate(names):
                lora_b = (module.lora_B[name].weight.detach() * module.scaling[name]).to(self.dtype)
                lora_a = module.lora_A[name].weight.detach().to(self.dtype)
                if i:
                    merged[rows].addmm_(lora_b, lora_a)
                else:
                    torch.addmm(source, lora_b, lora_a, out=merged[rows])
            row += w.shape[0]
        self.weight = self._layout(merged)

    def _layout(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight, CALIBRATION_ROWS) if self.packed else weight


def _norm(module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A Llama RMSNorm as one ``rms_norm`` call (the module's forward is seven ops, 61 norms a token); any other norm
    module as itself."""
    if type(module) is not LlamaRMSNorm:
        return module
    shape, weight, eps = (module.weight.shape[-1],), module.weight, module.variance_epsilon
    return lambda h: F.rms_norm(h, shape, weight, eps)


class _Layer:
    def __init__(self, layer, dtype: torch.dtype, packed: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _Projection((attn.q_proj, attn.k_proj, attn.v_proj), dtype, packed)
        self.o = _Projection((attn.o_proj,), dtype, packed)
        self.gate_up = _Projection((mlp.gate_proj, mlp.up_proj), dtype, packed)
        self.down = _Projection((mlp.down_proj,), dtype, packed)
        self.norm_in, self.norm_post = _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)

    def projections(self) -> tuple[_Projection, ...]:
        return self.qkv, self.o, self.gate_up, self.down


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class FusedLlama:
    """Llama decoding with fused projections at ``dtype``; :meth:`kv_forward` gives the loop its cached forward.
    ``linear`` is the product for plain weights; ``packed`` takes oneDNN's prepacked weights instead.

    The base weights are copied once; the model's plain LoRA adapters, as they are at construction and at each
    :meth:`refresh`, are merged over that copy, so one decoder serves every decoding call of a LoRA run while
    :meth:`current` (the base weights unchanged) holds. The model's own weights are never touched."""

    def __init__(self, model, dtype: torch.dtype = torch.float32, linear: Callable = F.linear, packed: bool = False):
        if not supports(model):
            raise ValueError(f"FusedLlama reproduces {MODEL_TYPES} models on the CPU; got {type(_unwrap(model))}.")
        if packed and not packing_available():
            raise ValueError("FusedLlama(packed=True) needs oneDNN's prepacked linear, which this torch build lacks.")
        core = _unwrap(model)
        config = core.config
        self.model, self.dtype, self.packed, self.plain_linear = weakref.ref(model), dtype, packed, linear
        self._linear = _packed_linear if packed else linear
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        with torch.no_grad():
            self.layers = [_Layer(layer, dtype, packed) for layer in core.model.layers]
            self.embed = core.model.embed_tokens.weight.detach()
            self.norm = _norm(core.model.norm)
            self.lm_head = _Projection((core.get_output_embeddings(),), dtype, packed)
        self.rotary = core.model.rotary_emb
        self.refresh()

    def projections(self) -> list[_Projection]:
        return [p for layer in self.layers for p in layer.projections()] + [self.lm_head]

    def current(self) -> bool:
        """Whether this copy still matches its model's base weights (the adapters are merged at :meth:`refresh`)."""
        return self.model() is not None and all(p.current() for p in self.projections())

    @torch.no_grad()
    def refresh(self) -> None:
        """Merge the model's active plain LoRA adapters, as they are now, over the base copy."""
        model = self.model()
        if model is None:
            raise RuntimeError("FusedLlama.refresh: the model this decoder copies no longer exists.")
        adapters = dict(plain_lora_layers(model))
        for projection in self.projections():
            projection.merge(adapters)

    def product(self, x: torch.Tensor, proj: _Projection) -> torch.Tensor:
        """``x`` (fp32) through the projection, out at the copy's dtype: its consumers promote bf16 to fp32 exactly
        (a residual add, rotary's products with fp32 cos/sin, the fp32 cache), so no op is spent converting."""
        return self._linear(x.to(self.dtype), proj.weight, proj.bias)

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
            qkv = d.product(layer.norm_in(h), layer.qkv)
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
            h = h + d.product(attended.transpose(1, 2).reshape(batch, new, q_size), layer.o)
            gate, up = d.product(layer.norm_post(h), layer.gate_up).float().chunk(2, dim=-1)
            h = h + d.product(F.silu(gate) * up, layer.down)
        return d.product(d.norm(h[:, -1]), d.lm_head).float()


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
    that precision's packed weights measured more than 5 % faster than its plain ones. The record may come from the
    shared calibration cache: timings that are not positive numbers count as no measurement (plain weights)."""
    if precision is None:
        choice = record["choice"]
        return choice.removesuffix("-packed"), choice.endswith("-packed") and packing_available()
    seconds = record.get("seconds")
    seconds = seconds if isinstance(seconds, dict) else {}
    packed, plain = (seconds.get(name) for name in (f"{precision}-packed", precision))
    timed = all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0 for t in (packed, plain)
    )
    return precision, timed and packed < plain * 0.95 and packing_available()
