"""A trained model in use: ``segbench predict``, ``segbench export`` and ``segbench serve``."""
