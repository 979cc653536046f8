import torch

from charlit.data.chat import render_prompt_ids, student_messages, teacher_messages
from charlit.eval.likelihood_judge import persona_gain
from charlit.models.tiny import tiny_model


def _mean_logp(model, ctx, resp):
    logits = model(torch.tensor([ctx + resp])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(ctx) - 1 + k, tok].item() for k, tok in enumerate(resp)) / len(resp)


def test_persona_gain_matches_float64_hand_computation(tokenizer, pirate):
    model = tiny_model(len(tokenizer), seed=1).eval()
    prompts = ["How do I boil an egg?", "What is a star?"]
    responses = [[100, 200, 300], [400, 500]]
    got = persona_gain(model, tokenizer, pirate, prompts, responses)
    with torch.no_grad():
        want = [
            _mean_logp(model, render_prompt_ids(tokenizer, teacher_messages(p, pirate)), r)
            - _mean_logp(model, render_prompt_ids(tokenizer, student_messages(p)), r)
            for p, r in zip(prompts, responses)
        ]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-5)
