"""Training: the loop, its losses, automatic planning, fine-tuning and what a run leaves to read.

* ``loop``: ``train(cfg, run_dir)``, readable top to bottom (AMP on CUDA, DDP under torchrun);
* ``losses``: Dice + cross-entropy and friends, deep-supervision weighting;
* ``plan``: spacing, intensity normalisation, patch and batch size from the training data;
* ``finetune``: a run that starts from a built-in model's or a trained run's weights;
* ``log``: metrics CSV, training-curve PNG, optional TensorBoard events, the one-screen summary.
"""
