"""Developer tools over the real pipeline: the terminal chat, fixture replay and export."""
