"""Recipes that build the models, fixtures and demo data shipped with sui-onnx.

Nothing here is part of the installed package: these modules need the ``export`` extra
(torch, transformers, optimum) and are run from the repository root as ``python -m models.X``.
"""
