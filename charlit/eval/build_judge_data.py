"""Generate the classifier judge's bundled replies: ``python -m charlit.eval.build_judge_data``.

The default model (SmolLM2-135M-Instruct) answers a spread of general prompts once bare and once prompted
with each shipped constitution. Rows land in ``charlit/eval/data/judge_replies.jsonl`` as
``{"split", "persona", "prompt", "reply"}``; ``persona`` is ``"bare"`` for the unprompted replies. The
``train`` split trains the classifier judge; the ``heldout`` split (other prompts) validates every judge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from charlit.data.constitution import bundled_personas, resolve_persona
from charlit.data.prompts import load_prompt_set
from charlit.eval.generation_cache import GenerationCache, default_cache_dir, weights_identity
from charlit.eval.prefix_sampler import SharedPrefixSampler
from charlit.eval.systems import System
from charlit.models import load_model
from charlit.sampling import SamplingParams

DATA_PATH = Path(__file__).parent / "data" / "judge_replies.jsonl"
BARE = "bare"
SEED = 2024
PARAMS = SamplingParams(max_new_tokens=40, temperature=0.7, top_p=0.9)


def judge_prompts(train_size: int, heldout_size: int) -> dict[str, list[str]]:
    """Every 5th training prompt (spanning all 18 domains); the first ``train_size`` train, the next held out."""
    pool = load_prompt_set("general_train")[::5]
    if train_size + heldout_size > len(pool):
        raise ValueError(
            f"train_size + heldout_size = {train_size + heldout_size} exceeds the {len(pool)} prompts available."
        )
    return {"train": pool[:train_size], "heldout": pool[train_size : train_size + heldout_size]}


def build(out: Path, train_size: int, heldout_size: int, batch_size: int) -> int:
    loaded = load_model(OmegaConf.create({"name_or_path": "bundled:smollm2-135m-instruct"}), apply_lora=False)
    model = loaded.model.eval()
    cache = GenerationCache(SharedPrefixSampler(loaded.tokenizer, batch_size=batch_size), PARAMS, default_cache_dir())
    model_id = weights_identity(model)
    systems = [System(BARE, model, model_id, None)]
    systems += [System(name, model, model_id, resolve_persona(name).system_prompt()) for name in bundled_personas()]
    rows = []
    for split, prompts in judge_prompts(train_size, heldout_size).items():
        for system in systems:
            replies = system.generate(cache, loaded.tokenizer, prompts, SEED, desc=f"{split}")
            for prompt, ids in zip(prompts, replies):
                text = loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
                rows.append({"split": split, "persona": system.label, "prompt": prompt, "reply": text})
            print(f"[charlit] {split} {system.label}: {len(prompts)} replies", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_PATH)
    parser.add_argument("--train-size", type=int, default=20)
    parser.add_argument("--heldout-size", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args(argv)
    n = build(args.out, args.train_size, args.heldout_size, args.batch_size)
    print(f"[charlit] wrote {n} rows to {args.out}")


if __name__ == "__main__":
    main()
