"""Conversations: the turns of a chain and their store (`turns`), what a model's tokenizer
knows (`models`, `tokens`), and the context sent for a follow-up (`context`)."""
