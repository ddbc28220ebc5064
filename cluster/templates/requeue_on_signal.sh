# Preemption and time limits. SLURM sends the warning signal (USR1; --signal=B:USR1@SECONDS)
# to this shell only, which passes it on to the job step as {{step_signal}}:
# {{step_signal_effect}}.
# Once the step has ended the job requeues itself, and the next run resumes where this one stopped.
# To preempt by hand: scancel --batch --signal=USR1 JOBID
warned=0
step_pid=
on_warning() {
    warned=1
    echo "[avsiam] $(date -u +%FT%TZ) warning signal: stopping the step to requeue the job" >&2
    if [ -n "$step_pid" ]; then kill -s {{step_signal}} "$step_pid" 2>/dev/null; fi
}
trap on_warning USR1
run_step() {  # "$@" in the background; wait through signals; requeue when the warning came
    "$@" &
    step_pid=$!
    if [ "$warned" = 1 ]; then kill -s {{step_signal}} "$step_pid" 2>/dev/null; fi
    local rc again
    while :; do
        wait "$step_pid"; rc=$?
        if [ "$rc" -gt 128 ]; then  # a trapped signal interrupted wait, or the step died of one
            if kill -0 "$step_pid" 2>/dev/null; then continue; fi
            wait "$step_pid"; again=$?
            if [ "$again" -ne 127 ]; then rc=$again; fi
        fi
        break
    done
    if [ "$warned" = 1 ]; then
        echo "[avsiam] step ended with status $rc after the warning:" \
             "requeueing job $SLURM_JOB_ID" >&2
        scontrol requeue "$SLURM_JOB_ID" && exit 0
        echo "[avsiam] scontrol requeue failed: submit this script again to resume" >&2
    fi
    return "$rc"
}
