"""Offline training for anytime inference: frames cache, TET + STR/RCS, DDP trainer, anytime evaluation.

``streamsnn train`` -> :func:`streamsnn.training.trainer.train_main`;
``streamsnn eval`` -> :func:`streamsnn.training.evaluate.eval_main`. Library entry points:
:func:`streamsnn.training.trainer.train` and :func:`streamsnn.training.loop.fit`.
"""
