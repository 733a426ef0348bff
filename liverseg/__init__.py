"""liverseg: liver (and other organ) segmentation in CT, with exact geometry.

``liverseg.segment(image, model="liver")`` is the Python entry point (``liverseg.api``); importing the
package loads nothing else.
"""

from .version import __version__


def segment(image, model="liver", **options):
    """Segment a CT: ``labels, volume = liverseg.segment(path_or_image)``; see ``liverseg.api.segment``."""
    from .api import segment as _segment  # heavy: the whole prediction road; `import liverseg` loads nothing else

    return _segment(image, model, **options)


__all__ = ["segment", "__version__"]
