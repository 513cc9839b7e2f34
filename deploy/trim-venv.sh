#!/bin/sh
# What the serving images leave out of a build's virtualenv (Dockerfile's runtime-files and slim-files stages):
#   sh deploy/trim-venv.sh VENV
# - pip: nothing installs at run time;
# - torch's C++ headers, test suite and test binaries (torch/include, torch/test, torch/bin but
#   torch_shm_manager, which `import torch` looks for) and its test libraries in torch/lib;
# - the test suites inside sympy, networkx, numpy and mpmath (folders named `tests`; numpy.testing stays);
# - the symbol tables of the shared objects that packages build themselves (`strip --strip-unneeded`: the
#   dynamic symbols stay). Never those auditwheel vendored into a `*.libs` folder, nor the extension modules
#   of packages that have one: patchelf rewrote them, and a stripped copy of numpy's OpenBLAS failed to load
#   ("ELF load command address/offset not page-aligned").
# Needs `strip` (binutils): the build stages have it, the serving images do not.
set -eu
venv="$1"
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "trim-venv: no site-packages under $venv" >&2; exit 1; }
"$venv/bin/python" -m pip uninstall --quiet --yes pip
if [ -d "$site/torch" ]; then
  rm -rf "$site/torch/include" "$site/torch/test"
  find "$site/torch/bin" -type f ! -name torch_shm_manager -delete
  rm -f "$site"/torch/lib/libjitbackend_test.so "$site"/torch/lib/libtorchbind_test.so \
    "$site"/torch/lib/libbackend_with_compiler.so "$site"/torch/lib/libaoti_custom_ops.so
fi
for package in sympy networkx numpy mpmath; do
  if [ -d "$site/$package" ]; then find "$site/$package" -type d -name tests -prune -exec rm -rf {} +; fi
done
# Packages with a vendored-libraries folder (numpy.libs, psycopg_binary.libs, ...) are left as they are.
for package in torch uvloop sqlalchemy grpc pydantic_core tokenizers orjson httptools watchfiles safetensors; do
  [ -d "$site/$package" ] || continue
  if [ -d "$site/$package.libs" ]; then echo "trim-venv: $package vendors libraries: not stripped"; continue; fi
  find "$site/$package" -type f \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded {} +
done
