# How many training runs scripts/study.sh runs side by side when PARALLEL is not set; sourced by study.sh and
# benchmarks/study_wall.sh, so that both use and record the same number.
#   gpu_gib PYTHON                 the first GPU's memory in GiB (0 without CUDA, or when PYTHON cannot tell)
#   default_parallel PROFILE GIB   3 for the full profile on a GPU with at least 70 GiB of memory (where three
#                                  covidnext50 runs side by side were measured: reports/benchmarks.md), else 1
gpu_gib() {
  "$1" -c "import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30 if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0
}
default_parallel() {
  if [ "$1" = full ] && [ "${2:-0}" -ge 70 ] 2>/dev/null; then echo 3; else echo 1; fi
}
