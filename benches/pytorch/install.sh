#!/usr/bin/env bash
# Install the PyTorch reference for benches/pytorch/ (mae_step.py,
# fmnist_pretrain.py, plot_losses.py; CPU use only).
#
# Idempotent: does nothing if the pinned torch already imports and runs, and
# safetensors + numpy + matplotlib are present. matplotlib (only for
# plot_losses.py) is installed on its own if it is the only thing missing.
#
# Why not a "CPU wheel": the CPU-only builds (torch==X+cpu) live only on the
# PyTorch package index, which this workplace cannot reach. Every torch wheel
# on PyPI for linux x86_64 is a CUDA build whose libtorch_cpu.so / libtorch.so
# are *link-time* dependent on libcudart, libcublas(Lt), libcudnn, libnccl,
# libcusparse(Lt), libcufft, libcufile, libnvrtc, libnvshmem, libcupti and
# libcusolver. `pip install --no-deps torch` therefore fails at `import torch`
# ("libcublasLt.so.*[0-9] not found"). Those NVIDIA runtime libraries are
# needed even though no GPU is ever used. What CAN be skipped are triton
# (~1 GB, only used by torch.compile's GPU code paths) and cuda-bindings.
#
# Modes (env TORCH_INSTALL):
#   light (default)  torch --no-deps + exactly the NVIDIA libs it links against
#                    + the pure-python deps.   ~4.3 GB in site-packages.
#   full             plain `pip install torch==$TORCH_VERSION` (adds triton,
#                    cuda-bindings, setuptools>=77).  ~5.4 GB.
#
# Env: PYTHON (default python3), TORCH_INSTALL (light|full).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.15.0"
MODE="${TORCH_INSTALL:-light}"

# The NVIDIA pins below are copied from torch-2.15.0's own Requires-Dist
# (unzip -p torch-2.15.0-*.whl 'torch-2.15.0.dist-info/METADATA').
NVIDIA_PINS=(
  "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.2.2"
  "nvidia-cudnn-cu13==9.26.0.51"
  "nvidia-cusparselt-cu13==0.8.1"
  "nvidia-nccl-cu13==2.30.7"
  "nvidia-nvshmem-cu13==3.7.2"
)
PURE_DEPS=(
  "filelock"
  "typing-extensions>=4.13.0"
  "sympy>=1.13.3"
  "networkx>=2.5.1"
  "jinja2"
  "fsspec>=0.8.5"
)
BENCH_DEPS=("numpy" "safetensors")
PLOT_DEPS=("matplotlib>=3.5")  # plot_losses.py (3.11.2 when this was written)

check() {
  "$PYTHON" - "$TORCH_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import torch, numpy, safetensors.torch  # noqa: F401
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
x = torch.randn(8, 8, requires_grad=True)
(x @ x).sum().backward()
EOF
}

PIP=("$PYTHON" -m pip install --disable-pip-version-check)

ensure_plot_deps() {
  if "$PYTHON" -c "import matplotlib" >/dev/null 2>&1; then
    return 0
  fi
  "${PIP[@]}" "${PLOT_DEPS[@]}"
}

if check; then
  ensure_plot_deps
  echo "install.sh: torch ${TORCH_VERSION}, numpy, safetensors, matplotlib usable; nothing else to do."
  exit 0
fi

case "$MODE" in
  light)
    "${PIP[@]}" "${NVIDIA_PINS[@]}" "${PURE_DEPS[@]}" "${BENCH_DEPS[@]}"
    "${PIP[@]}" --no-deps "torch==${TORCH_VERSION}"
    ;;
  full)
    "${PIP[@]}" "torch==${TORCH_VERSION}" "${BENCH_DEPS[@]}"
    ;;
  *)
    echo "install.sh: unknown TORCH_INSTALL=$MODE (use light or full)" >&2
    exit 2
    ;;
esac

if ! check; then
  echo "install.sh: torch installed but the import/backward check failed" >&2
  "$PYTHON" -c "import torch; print(torch.__version__)" >&2 || true
  exit 1
fi
ensure_plot_deps
"$PYTHON" -c "import torch, matplotlib; print('install.sh: torch', torch.__version__, 'OK, threads', torch.get_num_threads(), '; matplotlib', matplotlib.__version__)"
