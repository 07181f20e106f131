#!/bin/sh
# Train pump-anomaly's recipe variants for the leave-one-fault-family-out selection (models/README.md, pump-anomaly
# 1.3.0): code size {2, 4} x temperature offset range {8, 16} x vibration offset range {0, 4}, each into OUT/<name>/.
# Then: python models/select_generic.py --model pump-anomaly --recipes OUT --data DATA --out models/selection/pump-anomaly.json
# Usage (from the repo root, about 1 minute per variant on 2 cores):
#   sh models/train_recipes.sh .venv-train/bin/python ../shared/data/skab /tmp/recipes [--seed N]
set -eu
PY=$1 DATA=$2 OUT=$3
shift 3
mkdir -p "$OUT"
T16="Temperature=16,Thermocouple=16" T8="Temperature=8,Thermocouple=8" V4="Accelerometer1RMS=4,Accelerometer2RMS=4"
for code in 2 4; do
  for variant in "t16:$T16" "t16v4:$T16,$V4" "t8:$T8" "t8v4:$T8,$V4"; do
    name="c$code-${variant%%:*}"
    "$PY" models/train_pump_anomaly.py --data "$DATA" --out "$OUT/$name" --code "$code" --drift "${variant#*:}" \
      --verbose 0 "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed, see $OUT/$name.log" >&2; exit 1; }
    echo "$name: $(grep -E '^(float|int8)' "$OUT/$name.log" | tr -s ' ' | tr '\n' ' ')"
  done
done
