import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from charlit.config import cli_argv, rewrite_persona_path
from tests.conftest import REPO, compose


def test_default_composition_is_self_distill_on_bundled_model():
    cfg = compose()
    assert cfg.method.name == "self_distill"
    assert cfg.teacher.name == "self"
    assert cfg.data.kind == "prompts"
    assert cfg.model.name_or_path == "bundled:smollm2-135m-instruct"
    assert cfg.persona.name == "pirate"
    assert cfg.logger.name == "wandb" and cfg.logger.project == "charlit"


def test_sft_selects_conversation_data_unless_overridden():
    assert compose(["method=sft"]).data.kind == "conversations"
    assert compose(["method=sft", "data=prompts"]).data.kind == "prompts"


def test_trainer_and_model_overrides():
    cfg = compose(["trainer.max_steps=3", "model=tiny", "model.lora.r=8", "persona=stoic"])
    assert cfg.trainer.max_steps == 3 and cfg.model.lora.r == 8 and cfg.persona.name == "stoic"


def test_unknown_method_lists_choices():
    with pytest.raises(MissingConfigException) as err:
        compose(["method=nope"])
    assert "method/nope" in str(err.value) and "self_distill" in str(err.value.options)


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["trainer.not_a_key=1"])
    assert "not_a_key" in str(err.value.__cause__ or err.value)


def test_persona_path_rewrite(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntraits: [{trait: I am me., questions: [Who?]}]\n")
    assert rewrite_persona_path([f"persona={path}", "x=1"]) == ["persona=file", f"persona.path={path}", "x=1"]
    cfg = compose([f"persona={path}"])
    assert cfg.persona.path == str(path)


@pytest.mark.parametrize("trainer,strategy", [("ddp", "ddp"), ("fsdp", "fsdp"), ("deepspeed", "deepspeed_stage_2")])
def test_scale_trainer_configs_compose(trainer, strategy):
    cfg = compose([f"trainer={trainer}"])
    assert cfg.trainer.strategy == strategy and cfg.trainer.max_steps == compose([]).trainer.max_steps
    if trainer != "ddp":
        assert cfg.trainer.precision == "bf16-mixed"


def test_slurm_launcher_composes():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


ARMS = {  # arm: (method, data, the one setting that tells it apart)
    "dpo": ("dpo", "pairs", {}),
    "distill": ("distill", "teacher_replies", {"beta": 0.0}),
    "on_policy_distill": ("on_policy_distill", "teacher_replies", {"lmbda": 0.5}),
    "self_distill": ("self_distill", "prompts", {"teacher_weights": "frozen"}),
    "self_distill_ema": ("self_distill", "prompts", {"teacher_weights": "ema"}),
}


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_method_ablation_arms_compose(arm):
    cfg = compose([f"+arm={arm}"])
    method, data, settings = ARMS[arm]
    assert (cfg.method.name, cfg.data.name) == (method, data) and cfg.get("recipe") is None
    assert {k: cfg.method[k] for k in settings} == settings


def test_method_ablation_sweeps_every_arm_once():
    from omegaconf import OmegaConf

    swept = OmegaConf.load(REPO / "conf/experiment/method_ablation.yaml").hydra.sweeper.params["+arm"].split(",")
    assert sorted(swept) == sorted([*ARMS, "oct"]) == sorted(p.stem for p in (REPO / "conf/arm").glob("*.yaml"))
    # the arms differ in at least one of (recipe, method, data, method settings): no two are the same run
    runs = {arm: compose([f"+arm={arm}"]) for arm in swept}
    seen = {(c.get("recipe") and c.recipe.name, c.method.name, c.data.name, str(c.method)) for c in runs.values()}
    assert len(seen) == len(swept)


def test_self_distill_has_its_own_learning_rate_and_method_comparisons_pin_the_shared_one():
    assert compose([]).optim.lr == 1e-3  # the default method, self_distill (docs/measured.md: why)
    assert compose(["method=dpo"]).optim.lr == compose(["method=sft"]).optim.lr == 5e-4
    assert compose(["optim.lr=2e-4"]).optim.lr == 2e-4
    for experiment in ("method_ablation", "method_study", "method_ablation_cluster"):
        rates = {compose([f"experiment={experiment}", f"+arm={arm}"]).optim.lr for arm in [*ARMS, "oct"]}
        assert rates == {5e-4}, f"{experiment}: arms must differ in one thing, not in the learning rate too"


def test_robust_experiment_is_self_distill_on_the_robust_mix_at_twice_its_rate():
    cfg = compose(["experiment=robust", "persona=stoic"])
    assert (cfg.method.name, cfg.data.name, cfg.optim.lr) == ("self_distill", "robust", 2 * compose([]).optim.lr)
    assert cfg.data.robust.teacher_sees == "clean"
    assert compose(["experiment=robust", "optim.lr=1e-3"]).optim.lr == 1e-3  # the command line still wins


def test_oct_arm_is_the_pairs_introspection_recipe():
    assert compose(["+arm=oct"]).recipe.name == "pairs_introspection"


def test_tiny_model_sets_generation_defaults_that_overrides_still_beat():
    assert compose([]).generation.filters.unfinished == "trim"
    tiny = compose(["model=tiny"])
    assert (tiny.generation.max_new_tokens, tiny.generation.filters.unfinished) == (16, "keep")
    assert compose(["model=tiny", "generation.max_new_tokens=4"]).generation.max_new_tokens == 4


SK = "sk-" + "a1B2" * 10  # shaped like an OpenAI key


@pytest.mark.parametrize(
    "arg,named,env",
    [
        (f"+eval.llm_judge.api_key={SK}", "eval.llm_judge.api_key=...", "eval.llm_judge.api_key_env"),
        ("llm_judge.api_key=short", "llm_judge.api_key=...", "llm_judge.api_key_env (default OPENAI_API_KEY)"),
        ("+eval.llm_judge={model: m, api_key: k}", "eval.llm_judge=...", "OPENAI_API_KEY"),
        ("+logger.wandb_token=abc", "logger.wandb_token=...", "WANDB_API_KEY"),
        ("hydra.job.env_set.HF_TOKEN=abc", "hydra.job.env_set.HF_TOKEN=...", "HF_TOKEN"),
        ("eval.llm_judge.base_url=https://me:pw@judge.example.com/v1", "eval.llm_judge.base_url=...", "api_key_env"),
        (f"model.name_or_path={SK}", "model.name_or_path=...", "HF_TOKEN"),
        (SK, "an argument", "OPENAI_API_KEY"),
    ],
)
def test_credentials_on_the_command_line_are_refused_by_key_and_by_shape(arg, named, env):
    with pytest.raises(ValueError) as err:
        cli_argv(["model=tiny", arg])
    message = str(err.value)
    assert message.startswith(named) and env in message and "environment variable" in message
    assert SK not in message and "pw@" not in message and "short" not in message


def test_ordinary_overrides_that_mention_tokens_or_keys_pass():
    argv = ["-m", "generation.max_new_tokens=4", "model.tokenizer=/tmp/tok", "eval.llm_judge.api_key_env=MY_KEY"]
    argv += ["eval.llm_judge.base_url=https://api.openai.com/v1", "~eval.llm_judge.api_key", "--config-name=train"]
    assert cli_argv(argv) == argv


@pytest.mark.parametrize("arg", ["data.name=../../outside", "data.name=/abs/dir", "+data.name=ok,../x"])
def test_a_data_name_that_would_lead_hydra_out_of_outputs_is_refused(arg):
    with pytest.raises(ValueError, match=r"data.name='(\.\./\.\./outside|/abs/dir|\.\./x)' is not allowed"):
        cli_argv([arg])
    assert cli_argv(["data.name=my_prompts-2"]) == ["data.name=my_prompts-2"]


def test_sweep_job_dirnames_stay_short_and_distinct():
    from charlit.config import JOB_DIRNAME_CHARS, job_dirname

    assert job_dirname("+arm=oct,seed=0") == "+arm=oct,seed=0"
    long = ",".join(f"eval.suite.setting_{i}=2" for i in range(30))
    other = long.replace("=2", "=3")
    assert len(job_dirname(long)) == JOB_DIRNAME_CHARS and job_dirname(long).startswith(long[:100])
    assert job_dirname(long) != job_dirname(other)


def test_the_data_pipeline_samples_with_its_own_backend_when_one_is_chosen():
    from charlit.data.pipeline.dataset import generation_sampler

    assert generation_sampler(compose([])).name == "hf"
    both = compose(["sampler@generation.sampler=vllm"])
    assert generation_sampler(both).name == "vllm" and both.sampler.name == "hf"


@pytest.mark.parametrize(
    "path",
    [
        "multirun/x/0_+arm=oct,data.val_size=2,eval.judges=[likelihood]/0_dpo/final",  # a sweep job's run dir
        "/runs/it's here/final",
        "/runs/back\\slash/final\\",
        "/runs/odd\\'quote",
    ],
)
def test_a_recipe_stage_starts_from_any_previous_run_dir(path):
    """OCT's second stage loads the first's final/ by an override; a sweep's run dir names are full of = , [."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from charlit.recipes import stage_overrides

    stage = OmegaConf.create({"name": "sft", "overrides": ["method=sft"], "from_previous": True})
    *_, base, last = stage_overrides(stage, ["+arm=oct"], path, base=path)
    parsed = OverridesParser.create().parse_override(last)
    assert (parsed.key_or_group, parsed.value()) == ("model.name_or_path", path)
    parsed = OverridesParser.create().parse_override(base)  # evaluated against the recipe's own base model
    assert (parsed.key_or_group, parsed.value()) == ("eval.base_model", path)
