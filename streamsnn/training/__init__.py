"""Offline training for anytime inference: frame cache (HDF5, read by batch), named recipes,
TET + STR/RCS, DDP trainer, anytime evaluation.

``streamsnn train`` -> :func:`streamsnn.training.trainer.train_main`;
``streamsnn eval`` -> :func:`streamsnn.training.evaluate.eval_main`. Library entry points:
:func:`streamsnn.training.trainer.train` and :func:`streamsnn.training.loop.fit`.
"""
