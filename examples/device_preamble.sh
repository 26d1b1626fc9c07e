# Sourced first by the device-call scripts (examples/results/**/device_call.sh, run40 on): the
# common setup of a call on the GPU machine after staging calls 1-3 (GPU.md), the call carrying
# [".stage/4", ".data", ".whl"]. Joins the staged model once per machine, installs the carried
# wheels into /tmp/site, links the sibling packages into agentspark/ (the repository is on
# PYTHONPATH, not installed), copies the data and records the tree that ran in
# $OUT/${1}_commit.txt (the device copy's .git may be stale: tree_sha256 names the working tree).
#   . examples/device_preamble.sh TAG
set -u
mkdir -p /root/stage /root/data /root/f
[ -f /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf ] || { cp .stage/4/* /root/stage/ && cat /root/stage/part-0* > /root/stage/SmolLM2-135M-Instruct.Q4_1.gguf; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/stage/gguf-*.whl .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf
for d in kernels backends tools traces; do ln -sfn ../$d agentspark/$d; done
cp -r .data/* /root/data/
{ git log --oneline -1; git status --short; echo "tree_sha256 $(bash examples/results/batch_h200/tree_sha256.sh)"; } > $OUT/${1:?a tag for the commit file}_commit.txt
AS='import sys; from agentspark.cli import main; sys.exit(main(sys.argv[1:]))'
