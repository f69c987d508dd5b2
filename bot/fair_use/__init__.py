"""Fair use: who may ask (`access`), how often and how many at once (`limits`), and how
much (`budgets`)."""
