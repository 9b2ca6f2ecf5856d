# Sourced by the experiments/run_*.sh scripts: `timed NAME COMMAND...` runs COMMAND and appends
# "NAME <seconds> s" to $TIMINGS (each script sets it to its results' timings.txt).
timed() {
  local name=$1; shift
  local start=$SECONDS
  "$@"
  echo "$name $((SECONDS - start)) s" >> "$TIMINGS"
}
