#!/bin/sh
# trainq's fake trainer: stands in for the diffusers LoRA/DreamBooth training scripts in tests.
# It runs in a busybox-only image (scripts/build-trainer-image.sh) and honours the container
# contract: dataset (ro) at /workspace/datasets, outputs (rw) at /workspace/outputs, HF cache
# at /workspace/models, config at /workspace/config.json (or --config PATH).
#
# Behaviour is steered by an optional /workspace/datasets/trainer.env, KEY=VALUE lines that
# are parsed, never sourced:
#   DURATION   seconds to "train", fractional allowed      (default 2)
#   STEPS      number of "progress: step i/N" lines          (default 5)
#   EXIT_CODE  exit status                                   (default 0)
#   MESSAGE    last line printed                             (default "fake-trainer: done")
# SIGTERM/SIGINT end it promptly with status 143/130 (docker stop, cancellation).

# PID 1 ignores signals it has no handler for, so install the handlers first. Waiting on a
# background sleep (not a foreground one) lets the handler run at once.
trap 'echo "fake-trainer: terminated"; exit 143' TERM
trap 'echo "fake-trainer: interrupted"; exit 130' INT

echo "fake-trainer: starting"

config=/workspace/config.json
while [ $# -gt 0 ]; do
    case "$1" in
        --config)
            if [ $# -ge 2 ]; then config=$2; shift; fi ;;
        --config=*)
            config=${1#--config=} ;;
    esac
    shift
done

if [ ! -f "$config" ]; then
    echo "fake-trainer: missing $config"
    exit 2
fi
echo "fake-trainer: config $config:"
cat "$config"
echo

DURATION=2
STEPS=5
EXIT_CODE=0
MESSAGE="fake-trainer: done"
control=/workspace/datasets/trainer.env
if [ -f "$control" ]; then
    # tr drops CRs of files written on Windows; the here-document keeps the loop in this shell.
    while IFS='=' read -r k v || [ -n "$k" ]; do
        case "$k" in
            DURATION)
                case "$v" in
                    ''|*[!0-9.]*|*.*.*) echo "fake-trainer: ignoring bad DURATION '$v'" ;;
                    *) DURATION=$v ;;
                esac ;;
            STEPS)
                case "$v" in
                    ''|*[!0-9]*) echo "fake-trainer: ignoring bad STEPS '$v'" ;;
                    *) STEPS=$v ;;
                esac ;;
            EXIT_CODE)
                case "$v" in
                    ''|*[!0-9]*) echo "fake-trainer: ignoring bad EXIT_CODE '$v'" ;;
                    *) EXIT_CODE=$v ;;
                esac ;;
            MESSAGE)
                MESSAGE=$v ;;
        esac
        k=
    done <<CONTROL
$(tr -d '\r' < "$control")
CONTROL
fi
[ "$STEPS" -ge 1 ] 2>/dev/null || STEPS=1
[ "$STEPS" -le 10000 ] || STEPS=10000

out=/workspace/outputs
mkdir -p "$out" 2>/dev/null
log="$out/trainer.log"
if ! : >"$log" 2>/dev/null; then
    echo "fake-trainer: cannot write to $out"
    log=/dev/null
fi
say() {
    echo "$*"
    echo "$*" >>"$log"
}

step_sleep=$(awk -v d="$DURATION" -v n="$STEPS" 'BEGIN { printf "%.3f", d / n }')
say "fake-trainer: training for ${DURATION}s in $STEPS steps"
i=1
while [ "$i" -le "$STEPS" ]; do
    sleep "$step_sleep" &
    wait $!
    say "progress: step $i/$STEPS"
    i=$((i + 1))
done

if ! printf 'fake safetensors weights written by trainq fake-trainer\n' \
        >"$out/pytorch_lora_weights.safetensors" 2>/dev/null; then
    echo "fake-trainer: cannot write $out/pytorch_lora_weights.safetensors"
fi
say "$MESSAGE"
exit "$EXIT_CODE"
