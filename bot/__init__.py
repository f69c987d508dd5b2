"""A Discord bot that answers `/ask` with a language model.

The package is layered; imports run one way, down the list:

    bot.__main__      the edge: settings, logging, resources, the three commands
    bot.discord_app   the Discord surface: client, commands, buttons, interaction replies
    bot.terminal      the terminal surface of `python -m bot ask`
    bot.answers       model text into messages: answering, streaming, splitting, wording
    bot.fair_use      who may ask and how much: access rules, limits, budgets
    bot.store         where state is kept (SQLite), behind the protocols of the layers above
    bot.model         the completion helper and the built-in model
    bot.config        typed settings
"""
