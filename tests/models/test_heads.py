import warnings

from peft import LoraConfig, get_peft_model

from charlit.models.heads import checkpointing_on
from charlit.models.tiny import tiny_model


def test_checkpointing_on_reads_the_model_and_its_peft_wrapper_without_deprecation_warnings():
    plain = tiny_model(50, seed=1)
    checkpointed = tiny_model(50, seed=1)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's own read of the deprecated property is not ours
        wrapped = get_peft_model(checkpointed, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert checkpointing_on(plain) is False
        assert checkpointing_on(checkpointed) is True
        assert checkpointing_on(wrapped) is True
