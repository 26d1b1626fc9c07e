# The sha256 of every .py file's path and contents under the package folders, examples/ and tests/
# (sorted): names a working tree where .git cannot (the device copy's .git may be stale).
cd "$(dirname "$0")/../../.." && find agentspark backends kernels tools traces examples tests -name '*.py' -not -path '*/__pycache__/*' -type f 2>/dev/null | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
