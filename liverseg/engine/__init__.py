"""Running a network over one input: tiles and blending, one CT volume, the loaded-model object.

* ``tiling``: networks as numpy callables, the Gaussian-blended sliding window, flip TTA;
* ``volume``: one CT volume: coarse-to-fine, memory plan, probabilities and ensembles' averages;
* ``postprocess``: label-map clean-up on the output grid (largest component, holes, small objects);
* ``loaded``: the one loaded-model type (``TrainedModel``, ``Ensemble``), ``predict``, device choice.
"""
