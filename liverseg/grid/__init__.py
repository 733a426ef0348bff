"""The network grid: an input volume onto it (with a record of how) and predictions back.

``road`` is the one road, for training, validation and prediction alike (``to_network_grid``,
``labels_to_network_grid``, ``probabilities_to_input_grid``, ``probabilities_to_labels``); ``record``
holds the ``GridRecord`` and the orientation geometry; ``resample`` the slab-wise numpy kernels.
"""
