"""Compare predictions with references: per-case metrics, a summary, and QC pictures.

Cases come from two files, two folders, or a prediction folder plus a manifest split (references,
images and field-of-view masks from the manifest). Volumes (NIfTI/NRRD/MHA/DICOM label maps) must
share the reference's grid; surface distances are in mm. Photographs (PNG/JPG/TIFF/GIF masks) are
scored inside their field-of-view mask when the manifest gives one, surface distances in pixels, and
ROC AUC from the 16-bit probability map ``liverseg predict`` writes beside the mask. Volumes: ROC AUC
and ECE (10 bins) per label from ``probabilities.nii.gz`` when ``liverseg predict --save-probabilities``
wrote one beside ``segmentation.nii.gz``. ECE (expected calibration error) is reported wherever AUC is.

Outputs (``out_dir``): ``per_case.csv``, ``summary.csv`` (mean, sd, median, min, max of every metric
per label), ``qc/<case>.png`` with false negatives in blue, false positives in red and true positives
in green over the image (photographs: the whole photo; volumes: the axial slice with most errors).

Lesions (volumes only), as the LiTS challenge reports tumours: for one lesion label (``lesion_label``,
or by default the label whose name contains tumour/tumor/lesion in ``label_names``), per case its voxel
Dice and lesion-wise detection (connected components matched by overlap; TP/FP/FN, precision, recall, F1;
rules and NaN conventions in :mod:`liverseg.metrics`), written to ``lesions.csv``; over all cases the
global Dice 2 Σ|P ∩ R| / Σ(|P| + |R|) and the detection scores of the summed TP/FP/FN, written to
``summary.csv`` (``lesion_*`` rows). ``per_case.csv`` is the same with or without a lesion label.

Modules: ``scoring`` (pairing, reading, per-case results: :func:`evaluate`), ``lesions`` (the lesion
label), ``qc`` (pictures), ``tables`` (summaries, CSV files, the text table) and ``run``
(:func:`run_evaluation`, all of ``liverseg evaluate`` but its argument parsing).
"""
from __future__ import annotations

from .lesions import LESION_WORDS, LesionResult, lesion_label_of, pool_lesions
from .run import EvaluationRun, run_evaluation
from .scoring import EVALUATION_FOLDER, METRICS, CaseResult, EvalCase, evaluate, manifest_cases, pair_cases
from .tables import (format_lesion_table, format_table, summarise, worst_cases, write_csv, write_lesions_csv,
                     write_outputs, write_summary_csv)

__all__ = ["CaseResult", "LesionResult", "EvalCase", "pair_cases", "manifest_cases", "evaluate", "lesion_label_of",
           "summarise", "worst_cases", "pool_lesions", "write_csv", "write_lesions_csv", "write_summary_csv",
           "format_table", "format_lesion_table", "write_outputs", "METRICS", "LESION_WORDS", "EVALUATION_FOLDER",
           "EvaluationRun", "run_evaluation"]
