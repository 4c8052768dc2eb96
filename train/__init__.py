"""Companion training package of fima-models, run from a checkout: ``python -m train COMMAND ...``.

Pretraining (FIMA and the MoCo baseline), the downstream recipes of the paper (fine-tune, linear
probe, retrieval, multi-clip test), result summaries and the end-to-end demo. It uses only the
public API of :mod:`fima_models`.
"""
