#!/usr/bin/env bash
# The end-to-end wall time of the study: runs scripts/study.sh (arguments and environment pass through: PROFILE,
# ARCHS, SEEDS, EPOCHS, CACHE, ADULT_CACHE, PLUS_CACHE, DATASET, BIN, OUT, COVIDNEXT_SOURCES, PARALLEL, SHORTCUT, MITIGATIONS) and adds one record, one line, to a JSON list:
# the profile, archs, seeds, epochs, device, torch, whether the data build was in it, the wall seconds and the exit
# status. A run stopped by SIGTERM/SIGINT (e.g. a time limit) is recorded too, as "interrupted" with its seconds so far.
#
#   PROFILE=full bash benchmarks/study_wall.sh          # the full study; `make study-wall` does the same set-up as `make study`
#   STUDY_WALL_OUT   the JSON list (default: reports/study_wall.json; PROFILE=quick: reports/quick/study_wall.json)
#   PYTHON           the python that has torch (default: $BIN/python, else python3), for the device only
#   REV              the revision recorded as "commit" (default: git rev-parse --short HEAD)
#
# The data build (the split, in 10_dataset, and the image cache, built by the first training run) is in the time only
# when DATASET is not 0 and no CACHE, ADULT_CACHE or PLUS_CACHE is given ("data_build": true); "cache" names the one
# the COVIDx-v1 runs use. The notebooks' own durations are in their papermill
# metadata (reports/*.ipynb), for a breakdown.
set -uo pipefail
cd "$(dirname "$0")/.."
export PROFILE=${PROFILE:-quick}
BIN=${BIN:-.venv/bin}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x "$BIN/python" ]; then PY=$BIN/python; else PY=python3; fi
if [ "$PROFILE" = full ]; then
  archs=${ARCHS-covidnext50 resnext50_32x4d resnet18 covidnext50-frozen}; seeds=${SEEDS:-0 1 2}; epochs=${EPOCHS:-30}; size=224
  OUTFILE=${STUDY_WALL_OUT:-reports/study_wall.json}
elif [ "$PROFILE" = cpu ]; then
  archs=${ARCHS:-resnet18}; seeds=${SEEDS:-0 1}; epochs=${EPOCHS:-8}; size=64
  OUTFILE=${STUDY_WALL_OUT:-reports/cpu/study_wall.json}
else
  archs=${ARCHS:-resnet18}; seeds=${SEEDS:-0 1}; epochs=${EPOCHS:-1}; size=32
  OUTFILE=${STUDY_WALL_OUT:-reports/quick/study_wall.json}
fi
data_build=true
if [ -n "${CACHE:-}${ADULT_CACHE:-}${PLUS_CACHE:-}" ] || [ "${DATASET:-1}" = 0 ]; then data_build=false; fi
device=$("$PY" -c "
import torch
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.__version__, torch.cuda.get_device_properties(0).total_memory // 2**30, sep='|')
else:
    m = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.lower().startswith('model name')), 'cpu')
    print(f'cpu: {m}', torch.__version__, 0, sep='|')" 2>/dev/null || echo "unknown|unknown|0")
gib=${device##*|}; device=${device%|*}
# the number of runs side by side, as study.sh would choose it, passed on so that the record names what ran
if [ -z "${PARALLEL:-}" ]; then source scripts/parallel.sh; PARALLEL=$(default_parallel "$PROFILE" "$gib"); fi
export PARALLEL

record() {  # status, seconds
  STATUS=$1 WALL=$2 DEVICE=${device%%|*} TORCH=${device##*|} ARCHS_=$archs SEEDS_=$seeds EPOCHS_=$epochs SIZE_=$size \
  DATA_BUILD=$data_build PARALLEL_=$PARALLEL SHORTCUT_=${SHORTCUT:-1} MITIGATIONS_=${MITIGATIONS:-default} STARTED=$started OUTFILE=$OUTFILE COMMIT=${REV:-$(git rev-parse --short HEAD 2>/dev/null || echo none)} \
  DIRTY=$(git status --porcelain -- covidnext nbs scripts 2>/dev/null | grep -q . && echo true || echo false) \
  "$PY" - <<'EOF' || echo "study_wall: could not write the record" >&2
import json, os
from pathlib import Path
e = os.environ
rec = dict(profile=e['PROFILE'], archs=e['ARCHS_'].split(), seeds=[int(s) for s in e['SEEDS_'].split()],
           epochs=int(e['EPOCHS_']), size=int(e['SIZE_']), device=e['DEVICE'], torch=e['TORCH'], cores=os.cpu_count(),
           data_build=e['DATA_BUILD'] == 'true',
           cache=next((Path(e[k]).name for k in ('CACHE', 'ADULT_CACHE', 'PLUS_CACHE') if e.get(k)), None),
           parallel=int(e['PARALLEL_']), shortcut=e['SHORTCUT_'] != '0', mitigations=e['MITIGATIONS_'].split(),
           status=e['STATUS'], wall_s=round(float(e['WALL']), 1), started_utc=e['STARTED'],
           commit=e['COMMIT'], uncommitted_changes=e['DIRTY'] == 'true')
out = Path(e['OUTFILE'])
old = json.loads(out.read_text()) if out.is_file() and out.read_text().strip() else []
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text('[\n' + ',\n'.join(json.dumps(r) for r in old + [rec]) + '\n]\n')
print(f"study_wall: {rec['status']} after {rec['wall_s']} s ({rec['profile']}, {' '.join(rec['archs'])} x seeds "
      f"{' '.join(map(str, rec['seeds']))} x {rec['epochs']} epochs on {rec['device']}); recorded in {out}")
EOF
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
child=
on_signal() {
  [ -n "$child" ] && kill -TERM -- "-$child" 2>/dev/null   # the study's whole process group (papermill, kernels)
  record interrupted "$(elapsed)"; exit 143
}
trap on_signal TERM INT
BIN=$BIN setsid bash scripts/study.sh "$@" &
child=$!
wait "$child"; rc=$?
if [ "$rc" = 0 ]; then status=ok; else status="failed (exit $rc)"; fi
record "$status" "$(elapsed)"
exit "$rc"
