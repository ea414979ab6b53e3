"""Offline training for anytime inference: frame cache (HDF5, read by batch), named recipes,
TET + STR/RCS, DDP trainer, anytime evaluation.

``streamsnn train`` (argparse in ``streamsnn.cli``) -> :func:`streamsnn.training.trainer.train`;
``streamsnn eval`` -> :func:`streamsnn.training.evaluate.evaluate_checkpoint`. Lower level:
:func:`streamsnn.training.loop.fit`.
"""
