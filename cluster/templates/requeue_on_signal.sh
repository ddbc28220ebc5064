# Stops, preemption and requeues. SLURM sends the time-limit warning (USR1; --signal=B:USR1@SECONDS)
# to this shell only; a preemption sends TERM to the step (this shell gets TERM only at the final
# kill), scancel sends TERM to both. On USR1 or TERM this shell passes the signal on to the step as
# {{step_signal}}: {{step_signal_effect}}.
# Training steps also get a stop-request file in the run folder, and the signal again every
# {{resend_seconds}} s until the ranks acknowledge it (RUN/stop-acknowledged): a warning that comes
# while the ranks are still starting is not lost.
# The job requeues itself once the step has ended after the warning, or after the ranks stopped on
# a request this shell did not get as TERM (preemption), or at once on a TERM that follows the
# warning (the time limit came first). A TERM to this shell alone (scancel, a time limit without
# warning, a preemption's final kill, when SLURM requeues by itself) is not requeued here.
# The next run resumes where this one stopped. To preempt by hand: scancel --batch --signal=USR1 JOBID
warned=
step_pid=
forward_stop() {
    if [ -n "$step_pid" ]; then kill -s {{step_signal}} "$step_pid" 2>/dev/null; fi
}
on_stop_signal() {  # $1: the signal this shell got
    echo "[avsiam] $(date -u +%FT%TZ) $1 signal: stopping the step" \
         "$([ "$1" = USR1 ] && echo "to requeue the job" || echo "(TERM: scancel, time limit or preemption)")" >&2
    if [ "$1" = TERM ] && [ "$warned" = USR1 ]; then
        # the time limit came before the step could stop (a slow save): SLURM kills it in
        # KillWait seconds, so requeue now; the next run resumes from the newest complete checkpoint
        echo "[avsiam] TERM after the warning: requeueing job $SLURM_JOB_ID now" >&2
        scontrol requeue "$SLURM_JOB_ID" && exit 0
    fi
    if [ -z "$warned" ]; then warned=$1; fi
    if [ -n "$stop_file" ]; then
        mkdir -p "${stop_file%/*}" && echo "$1" > "$stop_file"
    fi
    forward_stop
}
trap 'on_stop_signal USR1' USR1
trap 'on_stop_signal TERM' TERM
acknowledged() { [ -n "$ack_file" ] && [ -e "$ack_file" ]; }
run_step() {  # "$@" in the background; wait through signals; requeue when the warning came
    "$@" &
    step_pid=$!
    if [ -n "$warned" ]; then forward_stop; fi
    local rc again
    while :; do
        if [ -n "$warned" ] && [ -n "$ack_file" ] && ! acknowledged \
                && kill -0 "$step_pid" 2>/dev/null; then
            sleep {{resend_seconds}} & wait $!
            if ! acknowledged; then forward_stop; fi
            continue
        fi
        wait "$step_pid"; rc=$?
        if [ "$rc" -gt 128 ]; then  # a trapped signal interrupted wait, or the step died of one
            if kill -0 "$step_pid" 2>/dev/null; then continue; fi
            wait "$step_pid"; again=$?
            if [ "$again" -ne 127 ]; then rc=$again; fi
        fi
        break
    done
    if [ "$warned" = TERM ]; then
        echo "[avsiam] step ended with status $rc after TERM: not requeued here; submit the same" \
             "command again to resume" >&2
    elif [ -n "$warned" ] || acknowledged; then
        local cause="stop request"
        if [ -n "$warned" ]; then cause=warning; fi
        echo "[avsiam] step ended with status $rc after the $cause: requeueing job $SLURM_JOB_ID" >&2
        scontrol requeue "$SLURM_JOB_ID" && exit 0
        echo "[avsiam] scontrol requeue failed: submit this script again to resume" >&2
    fi
    return "$rc"
}
