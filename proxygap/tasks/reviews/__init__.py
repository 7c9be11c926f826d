"""``reviews``: short movie reviews from a seeded grammar, judged by a parsing gold reward."""

from proxygap.tasks.base import Task
from proxygap.tasks.reviews.build import ASSETS, POLICY_SIZES
from proxygap.tasks.reviews.gold import COMPONENTS, gold_score, wellformed
from proxygap.tasks.reviews.grammar import sample_prompts


def prompts(n: int, *, seed: int, heldout: bool = False) -> list[str]:
    """``n`` grammar prompts drawn with ``seed``. The grammar is the prompt distribution itself:
    training and held-out prompts are draws from separate seed streams (``heldout`` changes
    nothing)."""
    return sample_prompts(n, seed=seed)


TASK = Task(
    name="reviews",
    policy_path=ASSETS,
    tokenizer_path=ASSETS,
    gold=gold_score,
    prompts=prompts,
    wellformed=wellformed,
    components=COMPONENTS,
    separator=" ",
    max_new_tokens=40,
    policy_sizes={name: size.folder for name, size in POLICY_SIZES.items()},
    description=(
        "Movie reviews from a probabilistic grammar; gold parses each review and scores "
        "sentiment with negation and 'but', minus penalties for repetition, rambling and "
        "ill-formed text."
    ),
)
