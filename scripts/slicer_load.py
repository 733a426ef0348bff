"""Open a liverseg result in 3D Slicer: the CT, the segmentation with its names and colours, in 3D.

Usage, from 3D Slicer's Python console (View > Python Console)::

    exec(open(r"/path/to/liverseg/scripts/slicer_load.py").read())
    load_case(r"/path/to/OUT/case")                      # CT path taken from OUT/case/report.json
    load_case(r"/path/to/OUT/case", ct=r"/data/ct.nii.gz")  # or give the CT (file or DICOM folder)

or from a shell::

    Slicer --python-script scripts/slicer_load.py /path/to/OUT/case [--ct CT] [--no-3d]

The case folder is what ``liverseg predict`` writes: ``segmentation.seg.nrrd`` (segment names,
colours and terminology inside) is loaded when present; otherwise ``segmentation.nii.gz`` is loaded
as a label map, named and coloured with ``labels.ctbl``, and converted to a segmentation. The CT is
a NIfTI/NRRD/MHA file or a DICOM series folder (imported through a temporary DICOM database). The
segmentation is shown as outlines over the CT in the slice views and as surfaces in the 3D view.
A path to a ``.seg.nrrd`` or ``.nii.gz`` file can be given instead of the case folder.

This file runs inside Slicer's own Python, which has neither liverseg nor its dependencies: it uses
only the standard library and, inside the functions that need it, Slicer's ``slicer`` module.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SEG_NRRD = "segmentation.seg.nrrd"
LABEL_MAP = "segmentation.nii.gz"
COLOR_TABLE = "labels.ctbl"
REPORT = "report.json"
CT_WINDOW_LEVEL = (400.0, 40.0)  # abdomen: HU -160 .. 240


# ----------------------------------------------------------------------------- pure helpers (no Slicer)

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slicer_load.py", description="Open a liverseg result in 3D Slicer.")
    parser.add_argument("case", help="liverseg output folder of one case, or a .seg.nrrd / .nii.gz file")
    parser.add_argument("--ct", default=None, help="the CT (file or DICOM folder); default: 'input' in report.json")
    parser.add_argument("--no-3d", action="store_true", help="do not build 3D surfaces")
    return parser.parse_args(argv)


def script_args(argv: list[str] | None = None) -> list[str] | None:
    """Arguments when this file runs as ``Slicer --python-script slicer_load.py ...``; None when it was
    ``exec``-ed in the Python console (then ``sys.argv`` belongs to Slicer)."""
    argv = sys.argv if argv is None else argv
    if argv and Path(argv[0]).name == "slicer_load.py":
        return list(argv[1:])
    return None


def read_color_table(path: str | Path) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """Entries ``(index, name, (r, g, b, a))`` of a Slicer ``.ctbl`` file (comments skipped)."""
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 6:
            raise ValueError(f"{path}:{number}: expected 'index name R G B A', got {line!r}")
        rgba = tuple(int(v) for v in parts[2:6])
        entries.append((int(parts[0]), parts[1], rgba))  # type: ignore[arg-type]
    return entries


def resolve_case(case: str | Path, ct: str | Path | None = None) -> dict:
    """What to load: ``{'ct', 'segmentation', 'kind' ('seg.nrrd' or 'labelmap'), 'color_table'}``.

    Raises FileNotFoundError naming what is missing and how to give it.
    """
    case = Path(case).expanduser()
    if case.is_file():
        folder = case.parent
        segmentation = case
    elif case.is_dir():
        folder = case
        segmentation = case / SEG_NRRD if (case / SEG_NRRD).is_file() else case / LABEL_MAP
    else:
        raise FileNotFoundError(f"{case}: no such case folder or segmentation file")
    if not segmentation.is_file():
        raise FileNotFoundError(f"{folder}: neither {SEG_NRRD} nor {LABEL_MAP} found; give the folder "
                                "`liverseg predict` wrote for this case")
    kind = "seg.nrrd" if segmentation.name.lower().endswith(".seg.nrrd") else "labelmap"
    color_table = folder / COLOR_TABLE if (folder / COLOR_TABLE).is_file() else None

    if ct is None:
        report = folder / REPORT
        if not report.is_file():
            raise FileNotFoundError(f"{folder}: no {REPORT} to take the CT path from; give the CT with --ct "
                                    "(or ct=... in load_case)")
        ct = json.loads(report.read_text(encoding="utf-8")).get("input")
        if not ct:
            raise FileNotFoundError(f"{report}: has no 'input' entry; give the CT with --ct")
    ct = Path(ct).expanduser()
    if not ct.is_absolute():
        ct = (folder / ct) if (folder / ct).exists() else ct.resolve()
    if not ct.exists():
        raise FileNotFoundError(f"CT {ct} not found (moved since the prediction?); give it with --ct")
    return {"ct": ct, "segmentation": segmentation, "kind": kind, "color_table": color_table}


# ----------------------------------------------------------------------------- Slicer side

def _load_ct(path: Path):
    import slicer

    if path.is_dir():
        from DICOMLib import DICOMUtils

        loaded = []
        with DICOMUtils.TemporaryDICOMDatabase() as db:
            DICOMUtils.importDicom(str(path), db)
            for patient in db.patients():
                loaded.extend(DICOMUtils.loadPatientByUID(patient))
        volumes = [slicer.mrmlScene.GetNodeByID(i) for i in loaded]
        volumes = [v for v in volumes if v is not None and v.IsA("vtkMRMLScalarVolumeNode")]
        if not volumes:
            raise RuntimeError(f"{path}: no image series could be loaded from this DICOM folder")
        # the series with most voxels, as liverseg chooses the series with most slices
        return max(volumes, key=lambda v: v.GetImageData().GetNumberOfPoints())
    return slicer.util.loadVolume(str(path))


def _load_segmentation(paths: dict, ct_node):
    import slicer

    if paths["kind"] == "seg.nrrd":
        segmentation = slicer.util.loadSegmentation(str(paths["segmentation"]))
    else:
        label_node = slicer.util.loadLabelVolume(str(paths["segmentation"]))
        entries = read_color_table(paths["color_table"]) if paths["color_table"] else []
        if paths["color_table"]:
            color_node = slicer.util.loadColorTable(str(paths["color_table"]))
            label_node.GetDisplayNode().SetAndObserveColorNodeID(color_node.GetID())
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(label_node, segmentation)
        # name and colour each segment after the table (import names them from the colour node when
        # it has the value, but say it explicitly so older Slicer versions agree)
        by_value = {index: (name, rgba) for index, name, rgba in entries}
        seg = segmentation.GetSegmentation()
        for n in range(seg.GetNumberOfSegments()):
            segment = seg.GetNthSegment(n)
            value = segment.GetLabelValue()
            if value in by_value:
                name, rgba = by_value[value]
                segment.SetName(name)
                segment.SetColor(rgba[0] / 255.0, rgba[1] / 255.0, rgba[2] / 255.0)
        slicer.mrmlScene.RemoveNode(label_node)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    return segmentation


def load_case(case: str | Path, ct: str | Path | None = None, show_3d: bool = True):
    """Load CT + segmentation of one liverseg case into the scene; returns (ct_node, segmentation_node)."""
    import slicer

    paths = resolve_case(case, ct)
    ct_node = _load_ct(paths["ct"])
    display = ct_node.GetDisplayNode()
    if display is not None:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(*CT_WINDOW_LEVEL)
    segmentation = _load_segmentation(paths, ct_node)
    seg_display = segmentation.GetDisplayNode()
    if seg_display is not None:
        seg_display.SetVisibility2DFill(False)
        seg_display.SetVisibility2DOutline(True)
    slicer.util.setSliceViewerLayers(background=ct_node, foreground=None, label=None, fit=True)
    if show_3d:
        segmentation.CreateClosedSurfaceRepresentation()
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        view = slicer.app.layoutManager().threeDWidget(0).threeDView()
        view.resetFocalPoint()
        view.resetCamera()
    print(f"liverseg: loaded CT {paths['ct']} and {paths['segmentation'].name} "
          f"({segmentation.GetSegmentation().GetNumberOfSegments()} segments)")
    return ct_node, segmentation


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    load_case(args.case, args.ct, show_3d=not args.no_3d)
    return 0


if __name__ == "__main__" and script_args() is not None:
    main(script_args())  # type: ignore[arg-type]
