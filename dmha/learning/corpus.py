"""Generic conversations whose behaviour an edit must preserve (the preserved-key corpus).

An edit may only write into directions that ordinary prompts do not use (see
:mod:`dmha.learning.nullspace`). "Ordinary" is estimated from this corpus: a few
hundred varied requests, composed from templates and fillers so that no single
phrasing or topic dominates, each with the default model's own greedy answer. The
answers ship with the package (``data/preserved.json``) because generating them
takes minutes of CPU; keys are then taken by teacher forcing, rendered exactly as
served. It is disjoint from the gate's prompts (:mod:`dmha.learning.retain`), so the
gate measures drift on prompts the null space was not estimated from.

Regenerate the answers (after changing the prompts or the default model) with
``python -m dmha.learning.corpus``.
"""

from __future__ import annotations

import itertools
import json
import random
from functools import cache
from pathlib import Path

from dmha.learning.retain import GATE_RETAIN

__all__ = ["CORPUS_FILE", "preserved_corpus", "preserved_prompts"]

CORPUS_FILE = Path(__file__).with_name("data") / "preserved.json"

_TOPICS = (
    "the moon",
    "volcanoes",
    "the internet",
    "honey bees",
    "the Roman Empire",
    "rainforests",
    "electric cars",
    "the human heart",
    "chess",
    "coffee",
    "glaciers",
    "vaccines",
    "jazz music",
    "the printing press",
    "sharks",
    "solar panels",
    "democracy",
    "the stock market",
    "bread",
    "the Pacific Ocean",
    "black holes",
    "recycling",
    "the piano",
    "deserts",
    "antibiotics",
    "trains",
    "the Olympic Games",
    "tea",
    "mountains",
    "clouds",
    "batteries",
    "bicycles",
    "the Great Wall of China",
    "penguins",
    "robots",
    "libraries",
    "earthquakes",
    "football",
    "the brain",
    "vitamins",
    "airplanes",
    "gardening",
    "the Amazon river",
    "pyramids",
    "smartphones",
    "friendship",
    "the French Revolution",
    "wolves",
    "cheese",
    "lightning",
    "submarines",
    "the Renaissance",
    "owls",
    "wind turbines",
    "rice farming",
    "the ozone layer",
    "castles",
    "coral reefs",
    "the violin",
    "tornadoes",
    "bamboo",
    "spiders",
    "the metric system",
    "chocolate",
    "the Sahara",
    "satellites",
    "dinosaurs",
    "the Nile",
    "umbrellas",
    "kangaroos",
    "origami",
    "marathons",
    "the telescope",
    "whales",
    "newspapers",
    "fireworks",
    "bridges",
    "the Industrial Revolution",
    "mushrooms",
    "snow",
)
_SKILLS = (
    "learn a new language",
    "save money each month",
    "write a good essay",
    "start running",
    "cook rice",
    "make a budget",
    "plant tomatoes",
    "clean a laptop keyboard",
    "tie a tie",
    "prepare for an exam",
    "give a short speech",
    "fix a squeaky door",
    "make pancakes",
    "take better photos",
    "organise my desk",
    "learn to swim",
    "wake up earlier",
    "write a cover letter",
    "meditate",
    "make new friends",
    "back up my files",
    "paint a room",
    "train a puppy",
    "reduce stress",
    "read more books",
    "bake cookies",
    "change a light bulb",
    "write a poem",
    "plan a trip",
    "learn to draw",
    "keep houseplants alive",
    "stop procrastinating",
    "sharpen a knife",
    "fold a shirt",
    "start a podcast",
)
_FORMS = ("a short poem", "a two-line rhyme", "a short story", "a riddle", "a slogan", "a joke")
_CODE = (
    "checks whether a number is even",
    "returns the largest item in a list",
    "counts the vowels in a string",
    "sorts a list of names",
    "computes a factorial",
    "removes duplicates from a list",
    "converts Celsius to Fahrenheit",
    "checks whether a word is a palindrome",
    "sums the numbers from 1 to n",
    "finds the average of a list",
)
_LANGS = ("Python", "JavaScript", "Java", "C", "Rust")
_WORDS = (
    "house",
    "water",
    "friend",
    "book",
    "tree",
    "apple",
    "school",
    "sun",
    "night",
    "music",
    "bird",
    "road",
    "city",
    "bread",
    "flower",
)
_TARGETS = ("Spanish", "French", "German", "Italian")
_PAIRS = (
    ("a cat", "a dog"),
    ("tea", "coffee"),
    ("a river", "a lake"),
    ("a town", "a city"),
    ("summer", "winter"),
    ("a laptop", "a desktop"),
    ("a novel", "a poem"),
    ("the sun", "the moon"),
    ("a virus", "a computer worm"),
    ("renting", "buying a home"),
)
_CHAT = (
    "Hi there!",
    "Good morning!",
    "How is your day going?",
    "Can you help me with something?",
    "I feel a bit tired today.",
    "What can you help me with?",
    "Thank you so much!",
    "I just finished a long project.",
    "Tell me something interesting.",
    "Nice to meet you.",
    "What do you like to talk about?",
    "I'm bored. Any ideas?",
    "See you later!",
    "Do you have a favourite colour?",
    "Can you keep a secret?",
    "What's up?",
    "I'm learning to code.",
    "My cat is sleeping on my keyboard.",
    "It is raining here today.",
    "Can we talk about books?",
    "I got a new job!",
    "Good night!",
    "Who are you?",
    "I need some advice.",
    "That was helpful, thanks.",
)

_TOPIC_TEMPLATES = (
    "Tell me about {t}.",
    "What are three facts about {t}?",
    "Explain {t} to a child.",
    "Why are {t} important?",
    "Write one sentence about {t}.",
    "What is interesting about {t}?",
)


def _composed() -> list[str]:
    out: list[str] = []
    for i, topic in enumerate(_TOPICS):
        # Two templates per topic, rotating, so every template meets many topics.
        out.append(_TOPIC_TEMPLATES[i % len(_TOPIC_TEMPLATES)].format(t=topic))
        out.append(_TOPIC_TEMPLATES[(i + 3) % len(_TOPIC_TEMPLATES)].format(t=topic))
    out += [f"How do I {s}?" for s in _SKILLS]
    out += [f"Give me two tips to {s}." for s in _SKILLS[::2]]
    out += [f"Write {f} about {t}." for f, t in zip(itertools.cycle(_FORMS), _TOPICS[::2], strict=False)]
    out += [f"Write a {lang} function that {c}." for lang, c in zip(itertools.cycle(_LANGS), _CODE, strict=False)]
    out += [f"Translate '{w}' into {lang}." for w, lang in zip(_WORDS, itertools.cycle(_TARGETS), strict=False)]
    out += [f"What is the difference between {a} and {b}?" for a, b in _PAIRS]
    rng = random.Random(7)
    for _ in range(24):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(("plus", "minus", "times"))
        out.append(f"What is {a} {op} {b}?")
    out += list(_CHAT)
    return out


def preserved_prompts() -> list[str]:
    """The preserved-key corpus (deterministic; no prompt of the gate's retain set).

    Returns:
        A few hundred distinct user messages.
    """
    gate = {p.casefold() for p in GATE_RETAIN}
    seen: set[str] = set()
    out = []
    for prompt in _composed():
        key = prompt.casefold()
        if key not in gate and key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


@cache
def preserved_corpus() -> tuple[tuple[str, str], ...]:
    """The shipped ``(prompt, answer)`` pairs of the preserved corpus.

    Returns:
        The pairs, in :func:`preserved_prompts` order.
    """
    data = json.loads(CORPUS_FILE.read_text(encoding="utf-8"))
    return tuple((str(d["prompt"]), str(d["answer"])) for d in data)


def _regenerate() -> None:
    """Answer :func:`preserved_prompts` with the default model and rewrite the shipped file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dmha.config import ModelConfig, default_data_dir
    from dmha.learning.generation import greedy
    from dmha.learning.prompting import ChatFormat
    from dmha.llm.model_store import ensure_model

    torch.set_num_threads(1)
    model_dir = ensure_model(None, default_data_dir())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    fmt = ChatFormat(tokenizer, ModelConfig().system_prompt)
    prompts = preserved_prompts()
    conts = greedy(model, [fmt.prompt(p) for p in prompts], 96, fmt.eos_ids, batch_size=64)
    rows = [{"prompt": p, "answer": fmt.decode(c)} for p, c in zip(prompts, conts, strict=True)]
    CORPUS_FILE.write_text(json.dumps(rows, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    _regenerate()
