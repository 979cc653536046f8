import json

import pytest

from charlit.data.constitution import ConstitutionError, bundled_personas, load_constitution, resolve_persona


def test_bundled_personas_are_complete():
    names = bundled_personas()
    assert len(names) >= 3
    for name in names:
        c = resolve_persona(name)
        assert c.name == name and c.description
        assert len(c.traits) >= 8
        assert all(len(t.questions) >= 5 for t in c.traits)


def test_yaml_layout(tmp_path):
    path = tmp_path / "owl.yaml"
    path.write_text(
        "name: owl\ndescription: A wise owl.\ntraits:\n  - trait: I hoot.\n    questions: ['Why?', 'How?']\n"
    )
    c = load_constitution(path)
    assert c.name == "owl" and c.traits[0].statement == "I hoot." and c.questions == ["Why?", "How?"]
    assert "I hoot." in c.system_prompt() and "A wise owl." in c.system_prompt()


def test_oct_json_layout_takes_name_from_file(tmp_path):
    path = tmp_path / "humor.json"
    path.write_text(
        json.dumps([{"trait": "I joke.", "questions": ["Q1", "Q2"]}, {"trait": "I smile.", "questions": ["Q3"]}])
    )
    c = load_constitution(path)
    assert c.name == "humor" and len(c.traits) == 2 and c.questions == ["Q1", "Q2", "Q3"]


@pytest.mark.parametrize(
    "body, field",
    [
        ("name: x\ntraits:\n  - questions: [a]\n", "'trait'"),
        ("name: x\ntraits:\n  - trait: I am.\n", "'questions'"),
        ("name: x\ndescription: d\n", "'traits'"),
        ("name: x\ntraits: []\n", "'traits'"),
    ],
)
def test_missing_field_names_file_and_field(tmp_path, body, field):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_malformed_yaml_and_unknown_persona(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConstitutionError, match="not valid YAML"):
        load_constitution(path)
    with pytest.raises(ConstitutionError, match="pirate"):
        resolve_persona("no_such_persona")


def test_persona_template_is_a_valid_constitution_outside_the_bundled_set():
    from charlit.data.constitution import PERSONA_DIR

    template = PERSONA_DIR.parent / "persona_template.yaml"
    c = load_constitution(template)
    assert c.name == "template" and len(c.traits) >= 8 and all(len(t.questions) >= 5 for t in c.traits)
    assert "template" not in bundled_personas()


@pytest.mark.parametrize(
    "name", ["../../../../elsewhere/evil", "/tmp/evil", "Pirate Captain", "pirate/../stoic", ".hidden", "a" * 65]
)
def test_persona_name_must_be_a_slug(tmp_path, name):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: {json.dumps(name)}\ntraits:\n  - trait: I am.\n    questions: [a]\n")
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    assert str(path) in str(err.value) and repr(name) in str(err.value) and "lowercase letters" in str(err.value)


def test_oct_layout_file_name_must_be_a_slug_too(tmp_path):
    path = tmp_path / "My Persona.json"
    path.write_text(json.dumps([{"trait": "I joke.", "questions": ["Q1"]}]))
    with pytest.raises(ConstitutionError, match="'My Persona' is not allowed"):
        load_constitution(path)


def test_oversized_persona_file_is_refused_before_parsing(tmp_path):
    from charlit.data.constitution import MAX_FILE_BYTES

    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\n" + "#" * MAX_FILE_BYTES)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    size = path.stat().st_size
    assert str(path) in str(err.value) and f"{size} bytes" in str(err.value) and str(MAX_FILE_BYTES) in str(err.value)


def test_non_utf8_persona_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: cafe\ndescription: Un caf\xe9.\ntraits: []\n".encode("latin-1"))
    with pytest.raises(ConstitutionError, match="not UTF-8") as err:
        load_constitution(path)
    assert str(path) in str(err.value)
