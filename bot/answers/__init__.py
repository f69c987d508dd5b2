"""Turning model text into messages: answering, streaming, splitting and wording.

`Messages` is what an answer is shown through; Discord and the terminal implement it.
"""
