"""The network grid: an input volume onto it (with a record of how) and predictions back."""
