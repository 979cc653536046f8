from charlit.data.constitution import bundled_personas, resolve_persona
from charlit.data.prompts import heldout_prompts, load_prompt_set, training_prompts


def _norm(s):
    return " ".join(s.lower().split())


def test_bundled_prompt_sets_are_large_and_disjoint():
    train = load_prompt_set("general_train")
    heldout = load_prompt_set("general_heldout")
    assert len(train) >= 200 and len(heldout) >= 32
    persona_questions = {_norm(q) for name in bundled_personas() for q in resolve_persona(name).questions}
    assert not {_norm(p) for p in heldout} & ({_norm(p) for p in train} | persona_questions)


def test_training_set_includes_constitution_questions(pirate):
    prompts = training_prompts(["constitution", "general_train"], pirate)
    assert set(pirate.questions) <= set(prompts)
    held = heldout_prompts("general_heldout", 5, prompts)
    assert len(held) == 5 and not set(held) & set(prompts)
