from kvproj.cli import entry

entry()  # exits; a preempted run leaves at once with EXIT_PREEMPTED (143)
