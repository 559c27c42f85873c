"""Producing and grading samples: generation engines behind one factory, chat prompting, rewards."""
