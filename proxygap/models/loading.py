"""Load policies, reward models and tokenizers by path, safely.

Everything goes through the ordinary Hugging Face ``from_pretrained(path)`` API, so any causal LM
(policy) or sequence-classification model (reward model) can replace the built-in ones. Weights
are read from safetensors only (``use_safetensors=True``), and remote code is never trusted
unless the caller asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


class ModelLoadError(ValueError):
    """A model or tokenizer path that does not exist, or does not hold what was asked for."""


def _check_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"{what} path {str(path)!r} is not a directory (nothing to load)")
    if what != "tokenizer" and not any(p.glob("*.safetensors")):
        raise ModelLoadError(
            f"{what} path {str(path)!r} holds no *.safetensors weights "
            "(only safetensors are loaded; convert pickled checkpoints first)"
        )
    return p


CLASSIFIER_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
LM_HEADS = ("ForCausalLM", "LMHeadModel")


def _architectures(p: Path, what: str, trust_remote_code: bool) -> list[str]:
    """The model classes ``config.json`` names (empty if it names none)."""
    try:
        config = AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"{what} path {str(p)!r} holds no usable config.json: {first}"
        ) from None
    return list(getattr(config, "architectures", None) or [])


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer at ``path``; a missing pad token is set to the eos token."""
    p = _check_dir(path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(p, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a tokenizer from {str(path)!r}: {err}") from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# transformers wraps ``PreTrainedModel.to`` with ``functools.wraps(nn.Module.to)``, so type
# checkers read ``model.to(device)`` as passing the device for ``self``: the calls that move a
# loaded model carry a targeted ``type: ignore[arg-type]`` that points here.
def load_policy(
    path: str | Path, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A causal LM from ``path`` (safetensors weights), in eval mode. A folder whose config
    names a classifier (a reward model given as the policy) is refused: loading it as a causal LM
    would silently put a language-model head on it."""
    p = _check_dir(path, "policy")
    heads = [
        a for a in _architectures(p, "policy", trust_remote_code) if a.endswith(CLASSIFIER_HEADS)
    ]
    if heads:
        raise ModelLoadError(
            f"policy path {str(path)!r} holds a {heads[0]} (a classifier, e.g. a reward model); "
            "the policy must be a causal language model"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            p, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a causal LM from {str(path)!r}: {err}") from err
    return model.eval()


def load_reward_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A sequence-classification model with one output (a scalar reward) from ``path``. A folder
    whose config names a causal LM is refused: loading it would add a random, untrained head."""
    p = _check_dir(path, "reward model")
    lms = [a for a in _architectures(p, "reward model", trust_remote_code) if a.endswith(LM_HEADS)]
    if lms:
        raise ModelLoadError(
            f"reward model path {str(path)!r} holds a {lms[0]} (a language model); a reward "
            "model or gold must be a sequence-classification model with one output"
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            p, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a reward model from {str(path)!r}: {err}") from err
    if model.config.num_labels != 1:
        raise ModelLoadError(
            f"reward model at {str(path)!r} has {model.config.num_labels} outputs; expected 1"
        )
    return model.eval()


def check_reward_model_folder(
    path: str | Path, *, what: str = "reward model", trust_remote_code: bool = False
) -> None:
    """What :func:`load_reward_model` refuses, checked without reading the weights: no folder,
    no safetensors, no config, or a language model's config."""
    p = _check_dir(path, what)
    lms = [a for a in _architectures(p, what, trust_remote_code) if a.endswith(LM_HEADS)]
    if lms:
        raise ModelLoadError(
            f"{what} path {str(path)!r} holds a {lms[0]} (a language model), not a "
            "sequence-classification model with one output"
        )


def check_vocab_match(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, what: str
) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding table."""
    # ``Module.__getattr__`` is typed ``Tensor | Module``; an embedding's weight is a Parameter
    weight = cast(torch.Tensor, model.get_input_embeddings().weight)
    n_embed = weight.shape[0]
    if len(tokenizer) > n_embed:
        raise ModelLoadError(
            f"{what}: tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}; "
            "they do not belong together"
        )
