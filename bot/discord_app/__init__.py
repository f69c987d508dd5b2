"""The Discord surface: the client, its commands and buttons, and interaction replies."""
