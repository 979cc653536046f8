"""One evaluation: the model under test beside the bare base, the constitution-prompted base and
(optionally) another checkpoint, through every configured suite. Returns what ``eval.json`` holds."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from charlit.data.constitution import Constitution
from charlit.eval.generation_cache import GenerationCache, default_cache_dir, weights_identity
from charlit.eval.judges import build_judge
from charlit.eval.judges.llm import build_llm_judge
from charlit.eval.prefix_sampler import SharedPrefixSampler
from charlit.eval.suites import SUITES, SuiteContext, SuiteResult
from charlit.eval.systems import System
from charlit.sampling import SamplingParams

LABELS = ("model", "bare", "prompted", "compare")


@dataclass
class Candidate:
    """A model to place beside the references: the model under test or the comparison checkpoint."""

    model: torch.nn.Module
    name: str  # what it is, for the report (a path or model id)


def _identity(model, known: dict[int, str]) -> str:
    if id(model) not in known:
        known[id(model)] = weights_identity(model)
    return known[id(model)]


def build_systems(
    base: torch.nn.Module, constitution: Constitution, under_test: Candidate | None, compare: Candidate | None
) -> tuple[list[System], dict[str, str]]:
    """The distinct systems to run and, for every label, the label of the system that computes it (the
    untrained baseline ``model`` *is* the bare base, so it is computed once)."""
    ids: dict[int, str] = {}
    base_id = _identity(base, ids)
    wanted = [System("bare", base, base_id, None), System("prompted", base, base_id, constitution.system_prompt())]
    test_model = under_test.model if under_test else base
    wanted.append(System("model", test_model, _identity(test_model, ids), None))
    if compare is not None:
        wanted.append(System("compare", compare.model, _identity(compare.model, ids), None))
    distinct: dict[tuple, System] = {}
    aliases = {}
    for system in wanted:
        key = (system.model_id, system.system_prompt)
        distinct.setdefault(key, system)
        aliases[system.label] = distinct[key].label
    return list(distinct.values()), aliases


def _expand(result: SuiteResult, aliases: dict[str, str]) -> dict:
    def per_label(values: dict) -> dict:
        return {label: values[source] for label, source in aliases.items() if source in values}

    return {
        "status": result.status,
        "metrics": {m: {k: e.as_dict() for k, e in per_label(v).items()} for m, v in result.metrics.items()},
        "series": {m: {k: [e.as_dict() for e in s] for k, s in per_label(v).items()} for m, v in result.series.items()},
        "samples": result.samples,
        "per_prompt": {m: per_label(v) for m, v in result.per_prompt.items()},
    }


def evaluate(
    cfg,
    base: torch.nn.Module,
    tokenizer,
    constitution: Constitution,
    *,
    under_test: Candidate | None = None,
    compare: Candidate | None = None,
    base_name: str = "",
) -> dict:
    """Run ``cfg.suites`` (the ``eval`` config: suite sizes, judges, sampling, cache) and return the report dict."""
    start = time.perf_counter()
    base.eval()
    for candidate in (under_test, compare):
        if candidate is not None:
            candidate.model.eval()
    systems, aliases = build_systems(base, constitution, under_test, compare)
    sizes = OmegaConf.to_container(cfg.suite, resolve=True) if OmegaConf.is_config(cfg.suite) else dict(cfg.suite)
    sampled = SamplingParams(
        max_new_tokens=int(sizes["max_new_tokens"]),
        temperature=float(cfg.sampling.temperature),
        top_p=float(cfg.sampling.top_p),
    )
    decodings = {"sampled": sampled}
    if cfg.get("greedy", True):  # greedy decoding exposes loops that sampling hides
        decodings["greedy"] = SamplingParams(max_new_tokens=sampled.max_new_tokens, temperature=0.0)
    cache_dir = None if not cfg.cache else (cfg.cache_dir or default_cache_dir())
    sampler = SharedPrefixSampler(tokenizer, batch_size=int(cfg.batch_size))
    judges = {
        name: build_judge(str(name), base_model=base, tokenizer=tokenizer, batch_size=int(cfg.batch_size))
        for name in cfg.judges
    }
    bare = next(s for s in systems if s.label == "bare")
    runs = {name: SUITES.get(name) for name in sizes["suites"]}  # unknown names fail here, before any generation
    greedy_suites = set(sizes.get("greedy_suites") or ()) & set(runs)  # those of suite.suites also run greedily
    suites, timings, caches = {}, {}, {}
    llm_judge = build_llm_judge(cfg.get("llm_judge"))
    for decoding, params in decodings.items():
        cache = caches[decoding] = GenerationCache(sampler, params, cache_dir)
        ctx = SuiteContext(
            tokenizer=tokenizer,
            constitution=constitution,
            systems=systems,
            bare=bare,
            cache=cache,
            judges=judges,
            sizes=sizes,
            seed=int(cfg.seed),
            llm_judge=llm_judge,
            score_batch_size=int(cfg.batch_size),
        )
        for name, suite in runs.items():
            if decoding != "sampled" and name not in greedy_suites:
                continue
            key = name if decoding == "sampled" else f"{name}_{decoding}"
            t0 = time.perf_counter()
            print(f"[charlit] eval suite {key}", flush=True)
            suites[key] = _expand(suite(ctx), aliases)
            timings[key] = round(time.perf_counter() - t0, 2)
    return {
        "persona": constitution.name,
        "systems": {
            "model": under_test.name if under_test else f"{base_name} (untrained base)",
            "bare": base_name,
            "prompted": f"{base_name} + {constitution.name} constitution as system prompt",
            **({"compare": compare.name} if compare else {}),
        },
        "labels": [label for label in LABELS if label in aliases],
        "judges": list(judges) + ([llm_judge.description] if llm_judge else []),
        "sampling": {**sampled.__dict__, "seed": int(cfg.seed)},
        "decodings": {name: params.__dict__ for name, params in decodings.items()},
        "quality_gate": {"rule": ctx.gate.rule.label, "max_compression": ctx.gate.max_compression},
        "sizes": {k: v for k, v in sizes.items() if k != "suites"},
        "suites": suites,
        "timings_s": timings,
        "generation_cache": {
            "dir": str(cache_dir) if cache_dir else None,
            "hits": sum(c.hits for c in caches.values()),
            "misses": sum(c.misses for c in caches.values()),
        },
        "wall_time_s": round(time.perf_counter() - start, 2),
    }


def headline(report: dict) -> dict[str, float]:
    """Flat ``eval/<suite>/<metric>`` numbers for the model under test (and ``..._<label>`` for the references);
    the model's 95% interval rides along as ``..._ci95`` (half its width), which sweep reports draw as error bars."""
    out = {}
    for suite, body in report["suites"].items():
        for metric, per_label in body["metrics"].items():
            for label, est in per_label.items():
                key = f"eval/{suite}/{metric}" + ("" if label == "model" else f"_{label}")
                out[key] = est["mean"]
                if label == "model" and est.get("n", 0) > 1:
                    out[f"{key}_ci95"] = (est["hi"] - est["lo"]) / 2
    return out
