#!/usr/bin/env bash
# The study's steps, each a papermill run with its parameters recorded: the dataset report, then training and
# evaluation of each variant and seed, then the comparison with COVID-Net and COVID-Next, then HTML.
# `make study` calls it with the environment set up; it needs only papermill, nbconvert and `covidnext` importable.
#
#   PROFILE=full|quick   full: 224 px, 30 epochs, every variant, 3 seeds, reports/; quick: tiny, reports/quick/
#   ARCHS, SEEDS         override the variants and seeds (space-separated)
#   EPOCHS               override the epochs of the profile
#   COVIDNEXT_SOURCES    the sources folder; OUT: where split.csv goes (out/)
#   CACHE                a prebuilt image cache to train and evaluate from (for a machine without the sources)
#   DATASET=0            skip the dataset report (it reads the sources)
#   SHORTCUT=0           skip the age-shortcut step (adult normals: COVIDx-v1 + 1,000 adult films, 14_shortcut)
#   SHORTCUT_ARCH        the variant trained on the adult split (default: resnet18)
#   ADULT_CACHE          a prebuilt cache of out/covidx-v1-adult/split.csv (with CACHE, on a machine without the sources)
#   BIN                  folder of papermill and jupyter (default: .venv/bin)
set -euo pipefail
PROFILE=${PROFILE:-quick}
BIN=${BIN:-.venv/bin}
OUT=${OUT:-out}
SOURCES=${COVIDNEXT_SOURCES:-../shared/data}
SPLIT=$OUT/covidx-v1/split.csv
if [ "$PROFILE" = full ]; then
  ARCHS=${ARCHS:-covidnext50 resnext50_32x4d resnet18}; SEEDS=${SEEDS:-0 1 2}; REPORTS=reports; RUNS=runs
  TRAIN=(-p epochs "${EPOCHS:-30}" -p size 224)
else
  ARCHS=${ARCHS:-resnet18}; SEEDS=${SEEDS:-0 1}; REPORTS=reports/quick; RUNS=runs/quick
  TRAIN=(-p epochs "${EPOCHS:-1}" -p size 32 -p subset 64 -p batch_size 16 -p ema 0.9)
fi
if [ -n "${CACHE:-}" ]; then DATA=(-p cache "$CACHE"); else DATA=(-p split_csv "$SPLIT" -p sources "$SOURCES"); fi
PM=("$BIN/papermill" -k python3 --cwd . --no-progress-bar)
mkdir -p "$REPORTS" "$OUT"
t0=$(date +%s)
if [ "${DATASET:-1}" = 1 ]; then
  "${PM[@]}" nbs/study/10_dataset.ipynb reports/10_dataset.ipynb -p sources "$SOURCES" -p out "$OUT/covidx-v1"
  "$BIN/jupyter" nbconvert --to html reports/10_dataset.ipynb
fi
for a in $ARCHS; do
  for s in $SEEDS; do
    echo "== $a seed $s ($(( $(date +%s) - t0 )) s)"
    "${PM[@]}" nbs/study/11_train.ipynb "$REPORTS/11_train_${a}_seed${s}.ipynb" -p arch "$a" -p seed "$s" -p runs "$RUNS" \
      "${DATA[@]}" "${TRAIN[@]}"
    "${PM[@]}" nbs/study/12_evaluate.ipynb "$REPORTS/12_evaluate_${a}_seed${s}.ipynb" -p name "${a}_seed${s}" \
      -p checkpoint "$RUNS/$a-seed$s/best.pt" -p out "$REPORTS" "${DATA[@]}"
  done
done
"${PM[@]}" nbs/study/13_compare_covidnet.ipynb "$REPORTS/13_compare_covidnet.ipynb" -p reports "$REPORTS"
if [ "${SHORTCUT:-1}" = 1 ]; then
  # The age shortcut: the same variant trained on COVIDx-v1 plus adult normals, against the COVIDx-v1 runs above.
  SA=${SHORTCUT_ARCH:-resnet18}; ADULT=$OUT/covidx-v1-adult/split.csv
  if [ -n "${ADULT_CACHE:-}" ]; then ADATA=(-p cache "$ADULT_CACHE"); else
    "$BIN/covidnext-build" --sources "$SOURCES" --split-files "$SOURCES/covidx-v1-splits" --adult-normals --out "$OUT/covidx-v1-adult"
    ADATA=(-p split_csv "$ADULT" -p sources "$SOURCES"); fi
  for s in $SEEDS; do
    echo "== $SA seed $s on covidx-v1-adult ($(( $(date +%s) - t0 )) s)"
    "${PM[@]}" nbs/study/11_train.ipynb "$REPORTS/11_train_adult_${SA}_seed${s}.ipynb" -p arch "$SA" -p seed "$s" \
      -p runs "$RUNS/covidx-v1-adult" "${ADATA[@]}" "${TRAIN[@]}"
  done
  "${PM[@]}" nbs/study/14_shortcut.ipynb "$REPORTS/14_shortcut.ipynb" -p runs_v1 "$RUNS/$SA-seed*/best.pt" \
    -p runs_adult "$RUNS/covidx-v1-adult/$SA-seed*/best.pt" "${ADATA[@]}" -p out "$REPORTS"
fi
"$BIN/jupyter" nbconvert --to html "$REPORTS"/1[1234]_*.ipynb
echo "study done in $(( $(date +%s) - t0 )) s; reports in $REPORTS/"
