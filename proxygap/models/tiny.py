"""Tiny GPT-2 configurations for the built-in tasks' policies and reward models."""

from __future__ import annotations

from transformers import GPT2Config, PreTrainedTokenizerBase


def tiny_gpt2_config(
    tokenizer: PreTrainedTokenizerBase, *, n_embd: int, n_layer: int, n_head: int, n_positions: int
) -> GPT2Config:
    """A GPT-2 config sized for the task, without dropout (train and eval behave the same)."""
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
