"""The layouts of preference rows that users have: the explicit ``{prompt, chosen, rejected}``
strings, and TRL's implicit-prompt and conversational variants (``trl`` docs, "Dataset
formats: preference"):

- standard: ``{"prompt": "The sky is", "chosen": "blue.", "rejected": "green."}``;
- implicit prompt: ``{"chosen": "The sky is blue.", "rejected": "The sky is green."}`` — the
  prompt is the longest common prefix, cut back to a word boundary (as TRL's
  ``extract_prompt``), the responses are the rest without leading whitespace;
- conversational: ``prompt`` a list of ``{"role", "content"}`` messages ending with one user
  turn, ``chosen``/``rejected`` one assistant message each;
- conversational implicit: ``chosen``/``rejected`` whole conversations sharing every message but
  the final assistant one.

A conversational prompt becomes its user message's text (a task applies its chat template to
prompts, whatever file they came from); prompts of several turns or with a system message are
refused, as proxygap's tasks are single-turn.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["FORMATS", "parse_row"]

FORMATS = ("standard", "implicit", "conversational", "conversational-implicit")

Parsed = tuple[str, str, str, str]  # prompt, chosen, rejected, format


def _message(m: object, where: str) -> tuple[str, str] | str:
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
        return f"{where}: expected a {{role, content}} message, got {type(m).__name__}"
    if not isinstance(m.get("content"), str):
        return f"{where}: content must be a string, got {type(m.get('content')).__name__}"
    return str(m["role"]), str(m["content"])


def _messages(v: list[object], where: str) -> list[tuple[str, str]] | str:
    out = []
    for i, m in enumerate(v):
        parsed = _message(m, f"{where}[{i}]")
        if isinstance(parsed, str):
            return parsed
        out.append(parsed)
    return out


def _user_prompt(msgs: list[tuple[str, str]], where: str) -> str | tuple[str]:
    """The text of a single-turn prompt, or (why not,)."""
    roles = [r for r, _ in msgs]
    if roles != ["user"]:
        return (f"{where}: a prompt must be one user message, got roles {roles}",)
    return msgs[0][1]


def _reply(msgs: list[tuple[str, str]], where: str) -> str | tuple[str]:
    roles = [r for r, _ in msgs]
    if roles != ["assistant"]:
        return (f"{where}: a response must be one assistant message, got roles {roles}",)
    return msgs[0][1]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    if n < min(len(a), len(b)) and n and not a[n - 1].isspace():
        # the texts part inside a word: the shared part of that word belongs to the responses
        cut = max(a.rfind(" ", 0, n), a.rfind("\n", 0, n))
        n = cut + 1
    return n


def parse_row(row: Mapping[str, object], lineno: int) -> Parsed | str:
    """``(prompt, chosen, rejected, format)`` of one preference row, or a problem naming the
    line and field."""
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        return f"line {lineno}: missing key(s) {missing}"
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list):
        c = _messages(chosen, f"line {lineno}: chosen")
        r = _messages(rejected, f"line {lineno}: rejected")
        for parsed in (c, r):
            if isinstance(parsed, str):
                return parsed
        assert not isinstance(c, str) and not isinstance(r, str)
        if prompt is None:  # conversational, implicit prompt: all but the last message shared
            if len(c) < 2 or c[:-1] != r[:-1] or len(c) != len(r):
                return (
                    f"line {lineno}: chosen and rejected must share every message but their "
                    "last (an implicit conversational prompt)"
                )
            p, fmt = _user_prompt(c[:-1], f"line {lineno}: prompt"), FORMATS[3]
            c, r = c[-1:], r[-1:]
        elif isinstance(prompt, list):
            pm = _messages(prompt, f"line {lineno}: prompt")
            if isinstance(pm, str):
                return pm
            p, fmt = _user_prompt(pm, f"line {lineno}: prompt"), FORMATS[2]
        else:
            return f"line {lineno}: prompt must be a list of messages when chosen/rejected are"
        texts = [p, _reply(c, f"line {lineno}: chosen"), _reply(r, f"line {lineno}: rejected")]
        for t in texts:
            if isinstance(t, tuple):
                return t[0]
        return str(texts[0]), str(texts[1]), str(texts[2]), fmt
    bad = [
        k
        for k, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected))
        if not isinstance(v, str) and not (k == "prompt" and "prompt" not in row)
    ]
    if bad:
        return f"line {lineno}: {bad} must be strings (or chosen/rejected lists of messages)"
    assert isinstance(chosen, str) and isinstance(rejected, str)
    if isinstance(prompt, str):
        return prompt, chosen, rejected, FORMATS[0]
    if chosen == rejected:
        return f"line {lineno}: chosen and rejected are the same text"
    n = _common_prefix(chosen, rejected)
    return chosen[:n].rstrip(), chosen[n:].lstrip(), rejected[n:].lstrip(), FORMATS[1]
