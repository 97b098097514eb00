#!/usr/bin/env bash
# Quality table on seeded synthetic identities: every algorithm at its stock threshold, and at the
# threshold that is best (BCubed F) on a training set (seed 1), reported on a disjoint test set
# (seed 2). Usage: tools/quality-sweep.sh [N_FACES]   (needs a release build)
set -euo pipefail
n=${1:-10000}
bin=target/release/clip-cluster
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
$bin generate --out "$dir/train.bin" --labels-out "$dir/train.meta" --n "$n" --seed 1 2>/dev/null
$bin generate --out "$dir/test.bin" --labels-out "$dir/test.meta" --n "$n" --seed 2 2>/dev/null
run() { RUST_LOG=error $bin eval --features "$dir/$1.bin" --labels "$dir/$1.meta" --algorithm "$2" ${3:+--threshold $3} --json 2>/dev/null; }
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
echo "| algorithm | threshold | F_P | F_B | NMI | clusters | faces/s |"
echo "|---|---|---|---|---|---|---|"
for alg in stream batch knn-components chinese-whispers immich dbscan; do
  case $alg in
    stream|batch) grid="0.92 0.925 0.93 0.935 0.94 0.945" ;;
    *) grid="0.88 0.9 0.91 0.92 0.93 0.94" ;;
  esac
  best=""; best_f=-1
  for t in $grid; do
    f=$(run train "$alg" "$t" | field "r['bcubed']['f']")
    if python3 -c "import sys; sys.exit(0 if $f > $best_f else 1)"; then best=$t; best_f=$f; fi
  done
  for t in stock "$best"; do
    if [ "$t" = stock ]; then r=$(run test "$alg"); label="stock"; else r=$(run test "$alg" "$t"); label="$t (tuned)"; fi
    echo "$r" | field "'| $alg | $label | %.4f | %.4f | %.4f | %d | %.0f |' % (r['pairwise']['f'], r['bcubed']['f'], r['nmi'], r['n_clusters'], r['faces_per_second'])"
  done
done
