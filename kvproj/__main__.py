from kvproj.cli import main

code = main()
if code == 143:  # preempted (EXIT_PREEMPTED): the checkpoint is on disk; leave at once, the notice period is short
    from kvproj.callbacks.preemption import exit_now

    exit_now(code)
raise SystemExit(code)
