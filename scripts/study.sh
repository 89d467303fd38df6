#!/usr/bin/env bash
# The study's steps, each a papermill run with its parameters recorded: the dataset report, then training and
# evaluation of each variant and seed, then the comparison with COVID-Net and COVID-Next, then HTML.
# `make study` calls it with the environment set up; it needs only papermill, nbconvert and `covidnext` importable.
#
#   PROFILE=full|cpu|quick  full: 224 px, 30 epochs, every variant (covidnext50, resnext50_32x4d, resnet18,
#                        covidnext50-frozen), 3 seeds, reports/ (for a GPU);
#                        cpu: resnet18 at 64 px, 8 epochs, 3 seeds, reports/cpu/ (a little over an hour on 2 CPU cores);
#                        quick: tiny images and subsets, 1 epoch, reports/quick/ (a smoke test of every step)
#   ARCHS, SEEDS         override the variants and seeds (space-separated; ARCHS= trains no variant); a variant is a
#                        model name, or <model>-frozen for the seed's frozen backbone (here without ImageNet weights)
#   EPOCHS               override the epochs of the profile
#   COVIDNEXT_SOURCES    the sources folder; OUT: where split.csv goes (out/)
#   CACHE                a prebuilt image cache to train and evaluate from (for a machine without the sources)
#   DATASET=0            skip the dataset report (it reads the sources)
#   SHORTCUT=0           skip the age-shortcut step (adult normals: COVIDx-v1 + 1,000 adult films, 14_shortcut)
#   SHORTCUT_ARCH        the variant of the age-shortcut step (default: resnet18)
#   MITIGATIONS          the settings it screens on validation: <v1|adult|plus>[-pad|-equalize|-srcaug|-all], where
#                        plus is adult plus Cohen's COVID-19 films that COVIDx-v1 does not list, in train only
#                        (covidx-v1-adult-covid; default: adult adult-pad adult-equalize adult-srcaug adult-all v1-all
#                        plus plus-equalize)
#   ADULT_CACHE          a prebuilt squash cache of out/covidx-v1-adult/split.csv, for a machine without the sources:
#                        without CACHE it serves every COVIDx-v1 run too (drop_sources=radiography leaves the adult films
#                        out), so it is the one file such a machine needs; screen only settings without -pad/-all there
#   PLUS_CACHE           the same for out/covidx-v1-adult-covid/split.csv: the plus settings train from it (without it
#                        they need the sources). Without ADULT_CACHE and CACHE it serves every step: its added films are
#                        the source cohen-unlisted, so drop_sources=cohen-unlisted gives covidx-v1-adult, row for row,
#                        and radiography,cohen-unlisted gives COVIDx-v1
#   BIN                  folder of papermill and jupyter (default: .venv/bin)
#   PARALLEL             training runs at once (default for PROFILE=full on a GPU: one per 12 GiB of its memory,
#                        scripts/parallel.sh, e.g. 11 on 139 GiB and 6 on 80 GiB; 1 otherwise). Runs side by side fill
#                        the GPU better than one run does (reports/benchmarks.md); they start seed by seed, each seed's
#                        variants together, so that long and short runs share the GPU to the end
#   RESUME=1             pick up a stopped study: a variant and seed whose evaluation is in the reports is not run
#                        again (the reports are enough, no checkpoint needed), a stopped training run continues from
#                        its last.pt, a finished screen setting is not trained again; the comparison and the
#                        shortcut report are made again from everything there
set -euo pipefail
PROFILE=${PROFILE:-quick}
BIN=${BIN:-.venv/bin}
OUT=${OUT:-out}
SOURCES=${COVIDNEXT_SOURCES:-../shared/data}
SPLIT=$OUT/covidx-v1/split.csv
if [ "$PROFILE" = full ]; then
  ARCHS=${ARCHS-covidnext50 resnext50_32x4d resnet18 covidnext50-frozen}; SEEDS=${SEEDS:-0 1 2}; REPORTS=reports; RUNS=runs
  TRAIN=(-p epochs "${EPOCHS:-30}" -p size 224)
elif [ "$PROFILE" = cpu ]; then
  ARCHS=${ARCHS-resnet18}; SEEDS=${SEEDS:-0 1 2}; REPORTS=reports/cpu; RUNS=runs/cpu
  TRAIN=(-p epochs "${EPOCHS:-8}" -p size 64 -p ema 0.99)
else
  ARCHS=${ARCHS-resnet18}; SEEDS=${SEEDS:-0 1}; REPORTS=reports/quick; RUNS=runs/quick
  TRAIN=(-p epochs "${EPOCHS:-1}" -p size 32 -p subset 64 -p batch_size 16 -p ema 0.9)
  MITIGATIONS=${MITIGATIONS:-adult adult-all}
fi
if [ -n "${CACHE:-}" ]; then DATA=(-p cache "$CACHE")
elif [ -n "${ADULT_CACHE:-}" ]; then DATA=(-p cache "$ADULT_CACHE" -p drop_sources radiography)  # COVIDx-v1 = it without the adult films
elif [ -n "${PLUS_CACHE:-}" ]; then DATA=(-p cache "$PLUS_CACHE" -p drop_sources radiography,cohen-unlisted)  # ... and the added COVID-19 films
else DATA=(-p split_csv "$SPLIT" -p sources "$SOURCES"); fi
PM=("$BIN/papermill" -k python3 --cwd . --no-progress-bar)
RESUME=${RESUME:-0}; if [ "$RESUME" = 1 ]; then TRAIN+=(-p resume True); fi
mkdir -p "$REPORTS" "$OUT"
t0=$(date +%s)
if [ "${DATASET:-1}" = 1 ]; then
  "${PM[@]}" nbs/study/10_dataset.ipynb "$REPORTS/10_dataset.ipynb" -p sources "$SOURCES" -p out "$OUT/covidx-v1"
  "$BIN/jupyter" nbconvert --to html "$REPORTS/10_dataset.ipynb"
fi
# PARALLEL=N runs up to N training runs (each with its evaluation) at once, as a pool: when one ends the next starts,
# so on one GPU the start-up, data loading and evaluation of one overlap the others' training. A failed job stops the
# study once the jobs still running have ended.
if [ -z "${PARALLEL:-}" ]; then
  source "$(dirname "$0")/parallel.sh"
  if [ -x "$BIN/python" ]; then PY=$BIN/python; else PY=python3; fi
  gib=0; [ "$PROFILE" != full ] || gib=$(gpu_gib "$PY")
  PARALLEL=$(default_parallel "$PROFILE" "$gib")
  [ "$PARALLEL" = 1 ] || echo "study: $PARALLEL training runs side by side (one per ${RUN_GIB:-12} GiB of GPU memory; PARALLEL=N sets it)"
fi
JOBS=(); FAILED=0
reap() {  # wait until one of the jobs ends (polled: `wait -n` misses a job that ended before it on older bash)
  local i st
  while :; do
    for i in "${!JOBS[@]}"; do
      if ! kill -0 "${JOBS[$i]}" 2>/dev/null; then st=0; wait "${JOBS[$i]}" || st=$?; unset "JOBS[$i]"
        [ $st = 0 ] || FAILED=$st; return 0; fi
    done
    sleep 1
  done; }
wait_jobs() { while [ ${#JOBS[@]} -gt 0 ]; do reap; done
  [ $FAILED = 0 ] || { echo "study: a step failed (exit $FAILED); see above" >&2; exit $FAILED; }; }
spawn() { while [ ${#JOBS[@]} -ge "$PARALLEL" ]; do reap; done; [ $FAILED = 0 ] || wait_jobs
  "$@" & JOBS+=($!); }
keep_logs() {  # a run folder: its summary.json and log.csv beside the reports, in training_logs/ (checkpoints stay in $RUNS)
  local d="$REPORTS/training_logs/${1#"$RUNS"/}"; mkdir -p "$d"
  for f in summary.json log.csv; do [ ! -f "$1/$f" ] || cp "$1/$f" "$d/"; done; }
variant() {  # the 11_train parameters of a variant: an architecture, or <arch>-frozen (the seed's frozen backbone)
  case "$1" in *-frozen) echo "-p arch ${1%-frozen} -p name $1 -p freeze_backbone True" ;; *) echo "-p arch $1" ;; esac; }
html() { "$BIN/jupyter" nbconvert --log-level WARN --to html "$@"; }  # each run's reports as soon as they exist, beside the others' training
html_missing() {  # the reports given that exist and lack their HTML (a resumed study's kept runs)
  local f todo=(); for f in "$@"; do [ ! -f "$f" ] || [ -f "${f%.ipynb}.html" ] || todo+=("$f"); done
  [ ${#todo[@]} = 0 ] || html "${todo[@]}"; }
train_eval() {  # variant seed
  local nbs=("$REPORTS/11_train_${1}_seed${2}.ipynb" "$REPORTS/12_evaluate_${1}_seed${2}.ipynb")
  if [ "$RESUME" = 1 ] && [ -f "$REPORTS/12_evaluate_${1}_seed${2}/test_results.json" ]; then echo "== $1 seed $2: evaluated already, kept (RESUME=1)"
    html_missing "${nbs[@]}"; return; fi
  echo "== $1 seed $2 ($(( $(date +%s) - t0 )) s)"
  # shellcheck disable=SC2046
  "${PM[@]}" nbs/study/11_train.ipynb "${nbs[0]}" $(variant "$1") -p seed "$2" -p runs "$RUNS" \
    "${DATA[@]}" "${TRAIN[@]}"
  keep_logs "$RUNS/$1-seed$2"
  "${PM[@]}" nbs/study/12_evaluate.ipynb "${nbs[1]}" -p name "${1}_seed${2}" \
    -p checkpoint "$RUNS/$1-seed$2/best.pt" -p out "$REPORTS" "${DATA[@]}"
  html "${nbs[@]}"; }
for s in $SEEDS; do for a in $ARCHS; do spawn train_eval "$a" "$s"; done; done
wait_jobs
[ -z "$ARCHS" ] || "${PM[@]}" nbs/study/13_compare_covidnet.ipynb "$REPORTS/13_compare_covidnet.ipynb" -p reports "$REPORTS"
if [ "${SHORTCUT:-1}" = 1 ]; then
  # The age shortcut. Each mitigation setting is trained with the first seed; covidnext-screen picks the best on the
  # covidx-v1-adult validation split; the pick is trained with the other seeds; 14_shortcut compares it with the
  # COVIDx-v1 runs above and reports every setting's held-out numbers.
  SA=${SHORTCUT_ARCH:-resnet18}; ADULT=$OUT/covidx-v1-adult/split.csv; PLUS=$OUT/covidx-v1-adult-covid/split.csv; S0=${SEEDS%% *}
  MITIGATIONS=${MITIGATIONS:-adult adult-pad adult-equalize adult-srcaug adult-all v1-all plus plus-equalize}
  build_variant() {  # name, covidnext-build flags: the split, and its build report beside the study's reports
    "$BIN/covidnext-build" --sources "$SOURCES" --split-files "$SOURCES/covidx-v1-splits" --out "$OUT/$1" "${@:2}"
    cp "$OUT/$1/report.md" "$REPORTS/split_$1.md"; }
  # covidx-v1-adult from its own cache, else from the plus cache without the added films, else built from the sources
  ADULT_FROM=${ADULT_CACHE:-${PLUS_CACHE:-}}; ADULT_DROP=; [ -n "${ADULT_CACHE:-}" ] || [ -z "${PLUS_CACHE:-}" ] || ADULT_DROP=cohen-unlisted
  [ -n "$ADULT_FROM" ] || build_variant covidx-v1-adult --adult-normals
  case " $MITIGATIONS " in *" plus"*) [ -n "${PLUS_CACHE:-}" ] || build_variant covidx-v1-adult-covid --adult-normals --more-covid ;; esac
  mitigation() {  # the 11_train parameters of a setting: <v1|adult|plus>[-pad|-equalize|-srcaug|-all]
    case "${1#*-}" in
      v1|adult|plus) ;; pad) echo "-p resize_mode pad" ;; equalize) echo "-p harmonize equalize" ;;
      srcaug) echo "-p source_aug 0.5" ;; all) echo "-p resize_mode pad -p harmonize equalize -p source_aug 0.5" ;;
      *) echo "unknown mitigation setting $1" >&2; exit 2 ;;
    esac; }
  pads() { case "$1" in *-pad|*-all) return 0 ;; esac; return 1; }  # letterboxes: needs the sources, not a squash cache
  split_data() {  # setting split.csv cache [drop]: a split's data parameters at the setting's geometry, from its squash cache if any
    if [ -n "$3" ] && ! pads "$1"; then echo "-p cache $3${4:+ -p drop_sources $4}"; else echo "-p split_csv $2 -p sources $SOURCES"; fi; }
  data_for() {  # the data parameters of a setting: its split (plus: covidx-v1-adult-covid, whose val and test are adult's)
    case "$1" in adult*) split_data "$1" "$ADULT" "$ADULT_FROM" "$ADULT_DROP" ;; plus*) split_data "$1" "$PLUS" "${PLUS_CACHE:-}" ;; *) if pads "$1"; then echo "-p split_csv $SPLIT -p sources $SOURCES"; else echo "${DATA[*]}"; fi ;; esac; }
  train_setting() {  # setting seed
    local nb="$REPORTS/11_train_shortcut_${1}_${SA}_seed$2.ipynb"
    if [ "$RESUME" = 1 ] && [ -f "$RUNS/shortcut/$1/$SA-seed$2/summary.json" ]; then echo "== $SA $1 seed $2: trained already, kept (RESUME=1)"
      html_missing "$nb"; return; fi
    echo "== $SA $1 seed $2 ($(( $(date +%s) - t0 )) s)"
    # shellcheck disable=SC2046
    "${PM[@]}" nbs/study/11_train.ipynb "$nb" -p arch "$SA" -p seed "$2" \
      -p runs "$RUNS/shortcut/$1" $(data_for "$1") "${TRAIN[@]}" $(mitigation "$1")
    keep_logs "$RUNS/shortcut/$1/$SA-seed$2"
    html "$nb"; }
  # The reference, SHORTCUT_ARCH on COVIDx-v1: the study's own runs where their checkpoints are here (ARCHS trained
  # them); else (a resumed study keeps the reports, not the checkpoints) trained for this step as the setting v1.
  V1RUNS=$RUNS; for s in $SEEDS; do [ -f "$RUNS/$SA-seed$s/best.pt" ] || V1RUNS=$RUNS/shortcut/v1; done
  if [ "$V1RUNS" != "$RUNS" ]; then for s in $SEEDS; do spawn train_setting v1 "$s"; done; fi
  CAND=("v1=$V1RUNS/$SA-seed$S0/best.pt")
  for m in $MITIGATIONS; do spawn train_setting "$m" "$S0"; CAND+=("$m=$RUNS/shortcut/$m/$SA-seed$S0/best.pt"); done
  wait_jobs
  if [ -n "$ADULT_FROM" ]; then SDATA=(--cache "$ADULT_FROM"); else SDATA=(--split-csv "$ADULT" --sources "$SOURCES"); fi
  CHOSEN=$("$BIN/covidnext-screen" --runs "${CAND[@]}" --split-csv "$ADULT" "${SDATA[@]}" --out "$REPORTS/14_screen.json" | tail -1)
  echo "== chosen on validation: $CHOSEN"
  if [ "$CHOSEN" = v1 ]; then CHOSEN_RUNS="$V1RUNS/$SA-seed*/best.pt"; else
    for s in $SEEDS; do [ "$s" = "$S0" ] || spawn train_setting "$CHOSEN" "$s"; done; wait_jobs
    CHOSEN_RUNS="$RUNS/shortcut/$CHOSEN/$SA-seed*/best.pt"; fi
  read -r -a ADATA <<< "$(split_data "$CHOSEN" "$ADULT" "$ADULT_FROM")"   # held-out splits only: no added film there
  "${PM[@]}" nbs/study/14_shortcut.ipynb "$REPORTS/14_shortcut.ipynb" -p runs_v1 "$V1RUNS/$SA-seed*/best.pt" \
    -p runs_adult "$CHOSEN_RUNS" -p label_adult "chosen on validation: $CHOSEN" -p screen "$REPORTS/14_screen.json" \
    "${ADATA[@]}" -p out "$REPORTS"
fi
shopt -s nullglob; last=("$REPORTS"/1[34]_*.ipynb); shopt -u nullglob   # the runs' own reports are converted already
[ ${#last[@]} = 0 ] || html "${last[@]}"
echo "study done in $(( $(date +%s) - t0 )) s; reports in $REPORTS/"
