from charlit.data.chat import conversation_ids_and_labels, render_prompt_ids, student_messages, teacher_messages


def test_teacher_sees_constitution_student_never(tokenizer, pirate):
    prompt = "How do I boil an egg?"
    student = tokenizer.decode(render_prompt_ids(tokenizer, student_messages(prompt)))
    teacher = tokenizer.decode(render_prompt_ids(tokenizer, teacher_messages(prompt, pirate)))
    for trait in pirate.traits:
        assert trait.statement in teacher
        assert trait.statement not in student
    assert pirate.description not in student
    assert prompt in student and prompt in teacher
    assert student.endswith("<|im_start|>assistant\n") and teacher.endswith("<|im_start|>assistant\n")


def test_labels_cover_every_assistant_turn_only(tokenizer):
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Ahoy, matey!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Shipshape, thank ye."},
    ]
    ids, labels = conversation_ids_and_labels(tokenizer, messages)
    assert len(ids) == len(labels)
    trained = [i for i, lab in zip(ids, labels) if lab != -100]
    text = tokenizer.decode(trained)
    # exactly the two assistant replies, each with its end-of-turn marker, and nothing of the user turns
    assert text == "Ahoy, matey!<|im_end|>\nShipshape, thank ye.<|im_end|>\n"
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))
