"""Held-out general chat text, none of it arithmetic: the quickstart's alignment-tax probe.

The mean token NLL of these replies under a policy, minus that under the starting model,
says how much general language the arithmetic training cost (lower is better; a
rise is the tax). The replies are plain, factual and short, so the starting model already
assigns them reasonable likelihood.
"""

from __future__ import annotations

_PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Why is the sky blue?", "Sunlight is scattered by the molecules of the air, and blue light is scattered "
     "much more than red light, so the sky looks blue."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("What do bees make?", "Bees make honey from the nectar of flowers, and wax to build their combs."),
    ("Give me a tip for sleeping better.", "Try to go to bed and get up at the same time every day, and keep "
     "screens out of the bedroom for the last hour before sleep."),
    ("What is photosynthesis?", "Photosynthesis is the process by which plants use sunlight, water and carbon "
     "dioxide to make sugar and release oxygen."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("How do I boil an egg?", "Put the egg in a pot of boiling water for about nine minutes, then cool it in "
     "cold water before peeling."),
    ("What language is spoken in Brazil?", "The official language of Brazil is Portuguese."),
    ("Why do we have seasons?", "The Earth's axis is tilted, so each half of the planet gets more direct "
     "sunlight for part of the year and less for the rest."),
    ("What is a noun?", "A noun is a word that names a person, a place, a thing or an idea."),
    ("Suggest a name for a pet cat.", "How about Luna? It is short, easy to call and suits a curious cat."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("How can I save water at home?", "Fix dripping taps, take shorter showers and run the washing machine "
     "only when it is full."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("Why should I drink water?", "Water keeps your body at the right temperature, helps digestion and "
     "carries nutrients to your cells."),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines with five, seven and five "
     "syllables."),
    ("How do plants get water?", "Plants take up water from the soil through their roots, and it travels up "
     "the stem to the leaves."),
    ("What is the freezing point of water?", "Water freezes at zero degrees Celsius at sea level."),
    ("Name a musical instrument with strings.", "The violin is a musical instrument with four strings played "
     "with a bow."),
    ("What is recycling?", "Recycling turns used materials such as paper, glass and metal into new products "
     "instead of throwing them away."),
    ("How far away is the Moon?", "The Moon is about 384,000 kilometres from the Earth."),
    ("What is a good way to learn a new language?", "Practise a little every day, listen to native speakers "
     "and try to use the words you learn in real conversations."),
]


def general_rows() -> list[dict]:
    """The probe as conversational prompt/completion rows (the format SFT reads)."""
    return [{"prompt": [{"role": "user", "content": q}], "completion": a} for q, a in _PAIRS]
