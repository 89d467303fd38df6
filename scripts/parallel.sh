# How many training runs scripts/study.sh runs side by side when PARALLEL is not set; sourced by study.sh and
# benchmarks/study_wall.sh, so that both use and record the same number.
#   gpu_gib PYTHON                 the first GPU's memory in GiB (0 without CUDA, or when PYTHON cannot tell)
#   default_parallel PROFILE GIB   for the full profile on a GPU: one run per RUN_GIB (default 12) GiB of its memory,
#                                  at least 1 (139 GiB: 11, 80 GiB: 6, 24 GiB: 2); 1 for other profiles or without CUDA.
#                                  12 GiB is a covidnext50 run's share with room to spare (its peak is in every run's
#                                  summary.json, gpu_memory_peak_gib; reports/benchmarks.md). Runs side by side keep
#                                  the GPU busy while the others start, evaluate or wait on the host.
gpu_gib() {
  "$1" -c "import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30 if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0
}
default_parallel() {
  local n=1
  if [ "$1" = full ] && [ "${2:-0}" -gt 0 ] 2>/dev/null; then n=$(( $2 / ${RUN_GIB:-12} )); [ "$n" -ge 1 ] || n=1; fi
  echo "$n"
}
