#!/usr/bin/env bash
# The GPU benchmarks in one command, stage by stage, each writing its JSON as soon as it has measured (a stage cut
# short by a time limit keeps what it wrote). Figures go to reports/benchmarks/<stage>_<card>_<commit>.json (the UTC
# time where there is no git), so a run never writes over the files that benchmarks.md cites.
#
#   CACHE=.cache/covidx-v1-224-squash-... bash benchmarks/gpu.sh             # every stage
#   STAGES="profile augment" CACHE=... bash benchmarks/gpu.sh               # some of them
#
# Stages (STAGES, default: "throughput profile augment study"):
#   throughput  benchmarks/train_throughput.py, compile off: (a), (b), (c) and the ratios; (a) only with SEED_SOURCES
#   profile     the same with --profile: torch.profiler over 2 epochs of fit (busiest ops, the host's waits per step)
#   augment     benchmarks/augment_throughput.py: the source-breaking augmentation's JPEG step, on the device and the
#               previous libjpeg one, alone and with a training step
#   study       covidnext-study --time, the full profile from the cache (without the age-shortcut step unless SHORTCUT=1;
#               with it, the external steps train and score from PUBLIC_CACHE), stopped with SIGTERM after STUDY_LIMIT
#               seconds (default 600, the target): the record then says "interrupted" and its seconds
# Environment:
#   CACHE          a built cache (covidnext-cache), 224 px (required)
#   SEED_SOURCES   a folder with (part of) the sources for (a) (see train_throughput.py --pack-sources)
#   DROP_SOURCES   what to leave out of the cache for COVIDx-v1: none for a covidx-v1 cache (the default),
#                  radiography for covidx-v1-adult, radiography,cohen-unlisted for covidx-v1-adult-covid; the study
#                  then gets the cache as --cache, --adult-cache or --plus-cache (covidnext-study --help)
#   PUBLIC_CACHE   with SHORTCUT=1, a 224 px cache of covidx-v1-public for the public runs and 15_external (else the
#                  study builds that split from the sources)
#   PYTHON         the python that has torch and covidnext (default: .venv/bin/python, else python3)
#   REV            the code's revision, for the file names and the study's record (default: git rev-parse --short
#                  HEAD; set it where the checkout's copy has no git history, or a stale one)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CACHE:?CACHE=<a built 224 px cache folder> is required}"
[ -d "$CACHE" ] || { echo "gpu.sh: CACHE=$CACHE is not a folder" >&2; exit 2; }
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
card=$("$PY" -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")
[ "$card" != cpu ] || echo "gpu.sh: no CUDA device; the stages run their CPU versions" >&2
dest=reports/benchmarks; mkdir -p "$dest"
REV=${REV:-$(git rev-parse --short HEAD 2>/dev/null || date -u +%Y%m%dT%H%M)}
card=${card}_$REV
drop=(); [ -z "${DROP_SOURCES:-}" ] || drop=(--drop-sources "$DROP_SOURCES")
src=(); [ -z "${SEED_SOURCES:-}" ] || src=(--sources "$SEED_SOURCES")
case "${DROP_SOURCES:-}" in
  "") kind=--cache ;; radiography) kind=--adult-cache ;; radiography,cohen-unlisted) kind=--plus-cache ;;
  *) echo "gpu.sh: DROP_SOURCES=$DROP_SOURCES: none, radiography or radiography,cohen-unlisted (see covidnext-study --help)" >&2; exit 2 ;;
esac
shortcut=(--no-shortcut); [ "${SHORTCUT:-0}" = 0 ] || shortcut=()
[ -z "${PUBLIC_CACHE:-}" ] || [ "${SHORTCUT:-0}" = 0 ] || shortcut=(--public-cache "$PUBLIC_CACHE")
for stage in ${STAGES:-throughput profile augment study}; do
  echo "== $stage ($(date -u +%H:%M:%S) UTC)"
  case $stage in
    throughput) "$PY" benchmarks/train_throughput.py --cache "$CACHE" "${src[@]}" "${drop[@]}" --compile off \
                  --out "$dest/train_throughput_$card.json" ;;
    profile)    "$PY" benchmarks/train_throughput.py --cache "$CACHE" "${drop[@]}" --compile off --profile \
                  --out "$dest/profile_$card.json" ;;
    augment)    "$PY" benchmarks/augment_throughput.py --cache "$CACHE" --out "$dest/augment_$card.json" ;;
    study)      timeout -s TERM "${STUDY_LIMIT:-600}" "$PY" -m covidnext.study --profile full --no-dataset "${shortcut[@]}" "$kind" "$CACHE" \
                  --time --wall-json "$dest/study_wall_$card.json" --rev "$REV" \
                  || echo "gpu.sh: the study stopped (status $?); its record is in $dest/study_wall_$card.json" ;;
    *) echo "gpu.sh: unknown stage '$stage' (throughput, profile, augment, study)" >&2; exit 2 ;;
  esac
done
