"""Reply decoding (end of turn, format breaks) and the weights fingerprint in cache keys."""

import torch
from omegaconf import OmegaConf

from charlit.data.pipeline.generator import Generator, weights_fingerprint
from charlit.models import load_model
from charlit.models.tiny import tiny_model
from charlit.sampling import SamplingParams
from charlit.sampling.hf import HFSampler


def _generator(tokenizer):
    loaded = load_model(
        OmegaConf.create({"name_or_path": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1}}), tokenizer
    )
    return Generator(loaded, HFSampler(tokenizer), SamplingParams(max_new_tokens=4))


def test_decode_finished_unfinished_and_format_breaks(tokenizer):
    gen = _generator(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ok = gen.decode(ids(" Ahoy there, matey.") + [eos])
    assert (
        ok.finished
        and not ok.format_break
        and ok.text == "Ahoy there, matey."
        and ok.n_tokens == len(ids(" Ahoy there, matey.")) + 1
    )
    cut = gen.decode(ids("Ahoy there"))
    assert not cut.finished and cut.text == "Ahoy there" and cut.trimmed_text == ""
    cut = gen.decode(ids("Ahoy there. Hoist the"))
    assert cut.trimmed_text == "Ahoy there." and cut.trimmed_tokens == len(ids("Ahoy there.")) + 1
    assert ok.trimmed_text == ""  # finished replies are never trimmed
    assert gen.decode(ids("Sure.\nUser: and now me") + [eos]).format_break
    assert gen.decode(ids("Sure.<|im_start|>user\nhi") + [eos]).format_break
    assert not gen.decode(ids("The user said hello: fine.") + [eos]).format_break


def test_weights_fingerprint_tracks_every_weight():
    a, b = tiny_model(100, seed=0, hidden_size=16, num_layers=1), tiny_model(100, seed=0, hidden_size=16, num_layers=1)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert weights_fingerprint(tiny_model(100, seed=1, hidden_size=16, num_layers=1)) != weights_fingerprint(a)
    with torch.no_grad():
        b.model.norm.weight[3] += 1e-6
    assert weights_fingerprint(b) != weights_fingerprint(a)
    assert weights_fingerprint(a.to(torch.bfloat16)) != weights_fingerprint(
        tiny_model(100, seed=0, hidden_size=16, num_layers=1)
    )
