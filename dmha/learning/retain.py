"""Built-in prompts the model must keep answering as before, and a held-out text.

``TRAIN_RETAIN`` feeds the locality term of the objective; ``GATE_RETAIN`` is what the
gate checks, disjoint from it, so the gate measures drift on prompts the update did
not regularise on. Prompts are short and varied (facts, how-to, arithmetic, code,
chit-chat) because drift shows up unevenly across kinds of prompt. ``HELDOUT_TEXT``
is plain prose the model scores for the perplexity check.
"""

from __future__ import annotations

__all__ = ["GATE_RETAIN", "HELDOUT_TEXT", "TRAIN_RETAIN"]

TRAIN_RETAIN: tuple[str, ...] = (
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 7?",
    "Name three primary colours.",
    "How do I boil an egg?",
    "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about the sea.",
    "What is the largest planet in the solar system?",
    "Give me a tip for sleeping better.",
    "What does a CPU do?",
    "How many days are in a leap year?",
    "Write a Python function that adds two numbers.",
    "What is the boiling point of water in Celsius?",
    "Who painted the Mona Lisa?",
    "What is the difference between weather and climate?",
    "Suggest a name for a pet goldfish.",
    "What is the square root of 81?",
    "Explain what a noun is.",
    "What language is spoken in Brazil?",
    "How do plants get water?",
    "What is the speed of light?",
    "Tell me a fun fact about octopuses.",
    "What is the chemical symbol for gold?",
    "Why is the sky blue?",
    "How many continents are there?",
    "What should I pack for a beach trip?",
    "What is an algorithm?",
    "Who was Albert Einstein?",
    "Hello! How are you today?",
    "What is the capital of Italy?",
    "Who wrote Hamlet?",
    "What is 100 divided by 4?",
    "How do I change a flat tyre?",
    "What causes earthquakes?",
    "Translate 'cat' into German.",
    "Write a limerick about a frog.",
    "What is the largest ocean?",
    "Give me a recipe idea for dinner.",
    "What does HTML stand for?",
    "How many minutes are in a day?",
    "Write a JavaScript function that doubles a number.",
    "What is the melting point of ice?",
    "Who invented the telephone?",
    "What is the difference between a lake and a sea?",
    "Suggest a name for a coffee shop.",
    "What is 7 squared?",
    "Explain what an adjective is.",
    "What currency is used in Japan?",
    "How do birds fly?",
    "What is the longest river in Africa?",
    "Tell me a fun fact about dolphins.",
    "What is the chemical symbol for iron?",
    "Why do we have seasons?",
    "How many players are on a football team?",
    "What should I do if I can't sleep?",
    "What is a database?",
    "Who was Isaac Newton?",
    "Thanks for your help!",
    "Can you summarise the plot of Cinderella?",
)

GATE_RETAIN: tuple[str, ...] = (
    "What is the capital of Japan?",
    "Who wrote Pride and Prejudice?",
    "What is 9 plus 16?",
    "How do I make a cup of tea?",
    "What is gravity?",
    "Translate 'thank you' into French.",
    "Write a short poem about autumn.",
    "What is the smallest prime number?",
    "Give me a tip for studying.",
    "What does RAM stand for?",
    "How many hours are in a week?",
    "Write a Python function that reverses a string.",
    "At what temperature does water freeze in Fahrenheit?",
    "Who discovered penicillin?",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a bakery.",
    "What is 15 percent of 200?",
    "Explain what a verb is.",
    "What language is spoken in Mexico?",
    "How do bees make honey?",
    "What is the tallest mountain on Earth?",
    "Tell me a fun fact about elephants.",
    "What is the chemical formula of water?",
    "Why do leaves change colour in autumn?",
    "How many legs does a spider have?",
    "What should I bring to a job interview?",
    "What is machine learning?",
    "Who was Marie Curie?",
    "Good evening! What can you do?",
    "What is the capital of Australia?",
    "How does a rainbow form?",
    "Name a famous composer.",
    "What is the freezing point of water in Celsius?",
    "How do I stay motivated when working from home?",
    "What is the main ingredient of guacamole?",
    "Explain the water cycle in one sentence.",
    "What is the opposite of 'ancient'?",
    "How many sides does a hexagon have?",
    "What is a synonym for 'happy'?",
    "What do you call a baby cat?",
)

HELDOUT_TEXT = (
    "The river runs through the middle of the old town, under seven stone bridges. "
    "In the morning the market opens on the east bank, where farmers sell bread, cheese "
    "and fresh vegetables. Children walk to school along the water, and in the summer "
    "tourists rent small boats to see the houses from the river. The town hall, built in "
    "the fifteenth century, has a clock tower that rings every hour. Most people who live "
    "here work in the shops, the hospital or the university, which was founded more than "
    "three hundred years ago and is known for its library."
)
