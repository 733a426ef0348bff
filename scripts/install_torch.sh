#!/usr/bin/env bash
# Install PyTorch into the given interpreter's environment, choosing the build for this machine:
#   * an NVIDIA GPU (nvidia-smi lists one): PyPI's default Linux wheel, which ships CUDA;
#   * no GPU: a CPU-only build -- a local CPU wheel when pip's find-links has one (no download),
#     otherwise PyTorch's CPU wheel index (about 200 MB instead of several GB of CUDA libraries).
# LIVERSEG_TORCH_INDEX=URL forces a wheel index (e.g. a specific CUDA version's).
set -euo pipefail
PY="${1:?usage: install_torch.sh PYTHON}"
pip_install() { "$PY" -m pip install --quiet "$@"; }

if "$PY" -c "import torch" 2>/dev/null; then
    echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
    exit 0
fi
if [[ -n "${LIVERSEG_TORCH_INDEX:-}" ]]; then
    echo "installing torch from LIVERSEG_TORCH_INDEX=$LIVERSEG_TORCH_INDEX"
    pip_install torch --index-url "$LIVERSEG_TORCH_INDEX" --extra-index-url https://pypi.org/simple
elif [[ "$(uname -s)" == "Darwin" ]]; then
    echo "macOS: PyPI's torch wheel (CPU / Apple MPS)"
    pip_install "torch>=2.3"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found ($(nvidia-smi -L | head -n 1)): installing the CUDA build of torch"
    pip_install "torch>=2.3"
else
    echo "no NVIDIA GPU found: installing a CPU-only build of torch"
    if ! pip_install "torch==2.13.0+cpu" 2>/dev/null; then
        pip_install torch --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
    fi
fi
# -W ignore: numpy is not installed yet at this point, and torch warns about that on import
"$PY" -W ignore -c "import torch; print(f'torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
