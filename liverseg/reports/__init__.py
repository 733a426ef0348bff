"""What was found in a case: volumes, HU statistics, tumour burden, and pictures to check it by eye.

* ``case_report``: report.json, the preview mosaic, contour overlays, PNG writing;
* ``tumour_burden``: per-lesion volume, RECIST-style diameters, centroid and HU; lesions.csv.
"""
