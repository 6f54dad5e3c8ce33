"""Training groups for the reranker tests: a colour task a tiny model can learn in seconds."""

import random

from reranking.groups import TrainingGroup

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]
THINGS = ["car", "house", "kite", "boat", "door", "scarf", "bicycle", "teapot", "lamp", "umbrella",
          "chair", "balloon", "train", "fence", "jacket", "bucket", "pencil", "rug", "tent", "mug"]
# Negatives say something else about the same thing in the same words, so only learning which
# words are colours ranks the positive first (an untrained model ranks at random).
OTHER_QUALITIES = ["heavy", "old", "broken", "expensive", "new", "small", "wet", "borrowed", "cheap", "clean"]


def colour_groups() -> list[TrainingGroup]:
    """'what colour is the X': the positive names X's colour; negatives name other qualities of X."""
    rng = random.Random(7)
    return [TrainingGroup(query=f"what colour is the {thing}?", positives=[f"the {thing} is {rng.choice(COLOURS)}"],
                          negatives=[f"the {thing} is {quality}" for quality in rng.sample(OTHER_QUALITIES, 8)])
            for thing in THINGS]
