"""The language model: the completion helper (`llm`) and the built-in model (`local_model`)."""
