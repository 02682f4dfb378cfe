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
#   FORMAT     how progress is printed                       (default plain):
#              plain      "progress: step i/N" lines on stdout
#              diffusers  tqdm bar on stderr redrawn with carriage returns, as diffusers'
#                         train_*_lora.py print it: "Steps:  45%|####▌ | 450/1000 [02:13<02:43,  3.37it/s, loss=0.0912, lr=0.0001]"
#              kohya      the same with sd-scripts' "steps:" and "avr_loss=…"
#              ai-toolkit the same with "<name>:" and "lr: 1.0e-04 loss: 4.123e-01"
#              none       no progress at all (a trainer trainq cannot read)
#   CHATTY_LINES lines of chatter printed on stdout at once with every step, as fast as awk
#              writes them (a chatty trainer; default 0, at most 1000000)
#   ALLOC_MB   MiB of memory allocated (and touched) after step ALLOC_STEP, held while it
#              is allocated, then freed; more than the container's memory limit
#              (TRAINQ_MEMORY_LIMIT) gets the trainer killed by the kernel's OOM killer:
#              exit 137 (default 0: none, at most 65536)
#   ALLOC_STEP the step after which ALLOC_MB is allocated (default 1; 0: before the first)
#   CONFIG_ERROR when set, the trainer refuses its config as a real one does: prints
#              "fake-trainer: invalid config: <value>" on stderr and exits 2 (the trainer
#              contract's config error, docs/architecture.md) before training
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
FORMAT=plain
CHATTY_LINES=0
ALLOC_MB=0
ALLOC_STEP=1
CONFIG_ERROR=
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
            CONFIG_ERROR)
                CONFIG_ERROR=$v ;;
            ALLOC_MB)
                case "$v" in
                    ''|*[!0-9]*) echo "fake-trainer: ignoring bad ALLOC_MB '$v'" ;;
                    *) ALLOC_MB=$v ;;
                esac ;;
            ALLOC_STEP)
                case "$v" in
                    ''|*[!0-9]*) echo "fake-trainer: ignoring bad ALLOC_STEP '$v'" ;;
                    *) ALLOC_STEP=$v ;;
                esac ;;
            CHATTY_LINES)
                case "$v" in
                    ''|*[!0-9]*) echo "fake-trainer: ignoring bad CHATTY_LINES '$v'" ;;
                    *) CHATTY_LINES=$v ;;
                esac ;;
            FORMAT)
                case "$v" in
                    plain|diffusers|kohya|ai-toolkit|none) FORMAT=$v ;;
                    *) echo "fake-trainer: ignoring bad FORMAT '$v'" ;;
                esac ;;
        esac
        k=
    done <<CONTROL
$(tr -d '\r' < "$control")
CONTROL
fi
[ "$STEPS" -ge 1 ] 2>/dev/null || STEPS=1
[ "$STEPS" -le 10000 ] || STEPS=10000
[ "$CHATTY_LINES" -le 1000000 ] || CHATTY_LINES=1000000
[ "$ALLOC_MB" -le 65536 ] || ALLOC_MB=65536

if [ -n "$CONFIG_ERROR" ]; then
    echo "fake-trainer: invalid config: $CONFIG_ERROR" >&2
    exit 2
fi

# Allocates and touches $ALLOC_MB MiB in a child (awk doubles a string until it is that
# long), as a model and its activations fill memory. Killed by the OOM killer, the trainer
# dies with it as a one-process trainer would: exit 137.
allocate() {
    [ "$ALLOC_MB" -gt 0 ] || return 0
    echo "fake-trainer: allocating ${ALLOC_MB} MiB"
    awk -v mb="$ALLOC_MB" 'BEGIN { s = "0123456789abcdef"; need = mb * 1048576
        while (length(s) < need) s = s s }'
    rc=$?
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -gt 128 ] || rc=137
        exit "$rc"
    fi
}

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
# One tqdm state of step $1 (of $STEPS) in $FORMAT, without line end: a 10-cell bar of
# U+2588 blocks, elapsed<remaining as MM:SS, the rate, and the format's postfix.
tqdm_state() {
    awk -v i="$1" -v n="$STEPS" -v s="$step_sleep" -v f="$FORMAT" 'BEGIN {
        pct = int(100 * i / n); cells = int(10 * i / n); bar = ""
        for (c = 0; c < 10; c++) bar = bar (c < cells ? "\342\226\210" : " ")
        el = int(i * s); rem = int((n - i) * s); rate = (s > 0 ? 1 / s : 0)
        loss = 0.5 / (1 + i)
        t = sprintf("%02d:%02d<%02d:%02d", el / 60, el % 60, rem / 60, rem % 60)
        if (f == "diffusers")
            printf "Steps: %3d%%|%s| %d/%d [%s, %5.2fit/s, loss=%.4g, lr=0.0001]", pct, bar, i, n, t, rate, loss
        else if (f == "kohya")
            printf "steps: %3d%%|%s| %d/%d [%s, %5.2fit/s, avr_loss=%.4g]", pct, bar, i, n, t, rate, loss
        else
            printf "my_lora: %3d%%|%s| %d/%d [%s, %5.2fit/s, lr: 1.0e-04 loss: %.3e]", pct, bar, i, n, t, rate, loss
    }'
}
say "fake-trainer: training for ${DURATION}s in $STEPS steps"
tqdm=1
case "$FORMAT" in plain|none) tqdm=0 ;; esac
[ "$tqdm" = 0 ] || printf '\r%s' "$(tqdm_state 0)" >&2
[ "$ALLOC_STEP" -ne 0 ] || allocate
i=1
while [ "$i" -le "$STEPS" ]; do
    [ "$i" -ne $((ALLOC_STEP + 1)) ] || [ "$ALLOC_STEP" -eq 0 ] || allocate
    sleep "$step_sleep" &
    if [ "$CHATTY_LINES" -gt 0 ]; then
        awk -v i="$i" -v n="$CHATTY_LINES" 'BEGIN { for (k = 1; k <= n; k++)
            printf "chatter step %d line %d/%d: the quick brown fox jumps over the lazy dog\n", i, k, n }'
    fi
    wait $!
    if [ "$FORMAT" = plain ]; then
        say "progress: step $i/$STEPS"
    elif [ "$tqdm" = 1 ]; then
        printf '\r%s' "$(tqdm_state "$i")" >&2
    fi
    i=$((i + 1))
done
[ "$tqdm" = 0 ] || printf '\n' >&2
[ "$ALLOC_STEP" -lt "$STEPS" ] || allocate

if ! printf 'fake safetensors weights written by trainq fake-trainer\n' \
        >"$out/pytorch_lora_weights.safetensors" 2>/dev/null; then
    echo "fake-trainer: cannot write $out/pytorch_lora_weights.safetensors"
fi
say "$MESSAGE"
exit "$EXIT_CODE"
