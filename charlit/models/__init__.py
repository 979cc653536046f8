"""Loading the policy (student) and teacher models: Hugging Face ids or dirs, the bundled default, tiny test models."""

from charlit.models.heads import final_hidden, lm_head
from charlit.models.loading import LoadedModel, load_model, load_tokenizer

__all__ = ["LoadedModel", "load_model", "load_tokenizer", "lm_head", "final_hidden"]
