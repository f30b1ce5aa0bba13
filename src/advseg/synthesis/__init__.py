"""CT synthesis with a 3D progressive-growing GAN (PGGAN), for extra unlabeled training volumes.

Python API in :mod:`advseg.synthesis.api` (``train_gan``, ``sample_gan``, ``synthesis_report``,
``synthesize_unlabeled``); commands in :mod:`advseg.cli.synthesize` (``advseg synthesize ...``).
Nothing is imported here, so that the CLI starts without loading torch.
"""
