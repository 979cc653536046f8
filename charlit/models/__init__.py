"""Loading the policy (student) and teacher models: Hugging Face ids or dirs, the bundled default, tiny test models."""
from charlit.models.loading import LoadedModel, load_model, load_tokenizer
from charlit.models.heads import lm_head, final_hidden

__all__ = ["LoadedModel", "load_model", "load_tokenizer", "lm_head", "final_hidden"]
