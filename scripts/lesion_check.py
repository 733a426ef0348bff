#!/usr/bin/env python3
"""The built-in ``liver_lesions`` model on CTs with expert liver/lesion labels: lesion Dice and lesion-wise
detection (as ``liverseg evaluate`` scores them), with the lesions searched inside (a) the liver the model
finds itself and (b) the expert's liver (``liverseg.segment(..., liver_mask=)``), which separates the
lesion network's errors from the liver stage's.

    python scripts/lesion_check.py CT=LABEL [CT=LABEL ...] [--liver-label 1] [--lesion-label 2]
    python scripts/lesion_check.py ../shared/data/lits117/ct.nii.gz=../shared/data/lits117/label.nii.gz

LABEL: 0 background, ``--liver-label`` liver, ``--lesion-label`` lesion (LiTS: 1 and 2). CT=- runs the
two-stage model alone on a CT without labels (what does it find?). Prints one row per case and gate.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", metavar="CT=LABEL")
    parser.add_argument("--liver-label", type=int, default=1)
    parser.add_argument("--lesion-label", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import liverseg
    from liverseg.evaluation import evaluate
    from liverseg.io import read_volume, write_volume

    print(f"{'case':<28} {'liver from':<10} {'s':>5} {'liver mL':>8} {'lesion mL':>9} {'ref mL':>7} "
          f"{'lesion Dice':>11} {'ref':>4} {'found':>5} {'TP':>3} {'FP':>3} {'FN':>3} {'recall':>6} {'prec.':>6}")
    for item in args.cases:
        ct, _, label = item.partition("=")
        volume = read_volume(ct)
        reference = None if label in ("", "-") else read_volume(label)
        gates = [("model", None)]
        if reference is not None:
            gates.append(("expert", np.isin(np.asarray(reference.array),
                                            [args.liver_label, args.lesion_label]).astype(np.uint8)))
        for gate, mask in gates:
            t = time.perf_counter()
            result = liverseg.segment(volume, model="liver_lesions", threads=args.threads, liver_mask=mask)
            seconds = time.perf_counter() - t
            liver_ml = float(np.count_nonzero(result.labels)) * volume.voxel_volume_ml
            lesion_ml = float(np.count_nonzero(result.labels == 2)) * volume.voxel_volume_ml
            name = Path(ct).name if Path(ct).is_file() else Path(ct).name + "/"
            row = f"{name[:28]:<28} {gate:<10} {seconds:5.1f} {liver_ml:8.1f} {lesion_ml:9.1f}"
            if reference is None:
                print(row + "  " + "; ".join(result.warnings))
                continue
            ref = np.asarray(reference.array)
            with tempfile.TemporaryDirectory() as tmp:
                pred_path, ref_path = Path(tmp) / "case.nii.gz", Path(tmp) / "ref" / "case.nii.gz"
                ref_path.parent.mkdir()
                write_volume(volume.with_array(result.labels), pred_path)
                remapped = np.where(ref == args.lesion_label, 2, np.where(ref == args.liver_label, 1, 0))
                write_volume(reference.with_array(remapped.astype(np.uint8)), ref_path)
                lesions: list = []
                evaluate(pred_path, ref_path, {1: "liver", 2: "liver lesion"}, lesions=lesions)
            r = lesions[0]
            ref_ml = float(np.count_nonzero(ref == args.lesion_label)) * volume.voxel_volume_ml
            print(f"{row} {ref_ml:7.1f} {r.dice:11.4f} {r.ref_lesions:4d} {r.pred_lesions:5d} {r.tp:3d} {r.fp:3d} "
                  f"{r.fn:3d} {r.recall:6.3f} {r.precision:6.3f}")
    print("\nlesion Dice: voxels of label 2; ref/found: 26-connected lesions in the reference / the prediction; "
          "TP/FP/FN, recall, precision: lesion-wise detection by any overlap (liverseg evaluate's defaults)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
