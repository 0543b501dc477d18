"""The one definition of the exit codes of every ``relmon`` command (the CLI returns them, the jobs'
exceptions carry them: :attr:`relmon.jobs.errors.RunInterrupted.exit_code`).

Imports nothing, so the CLI's parser (``relmon --help``) stays free of torch.
"""

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT = 0, 2, 3, 4
EXIT_INTERRUPTED = 5  # SIGTERM or SIGINT: finished batches' records written, no metrics pushed
EXIT_EMPTY = 6  # the window held nothing to score (sampling selected nothing, no readable or new input)
EXIT_TIMEOUT = 7  # run_timeout_seconds passed: finished batches' records written, no metrics pushed
EXIT_CODES_HELP = (
    "Exit codes: 0 success, 2 usage error, 3 bad input or configuration (incl. a calibration "
    "for another model), 4 output failure (push, records, textfile, endpoint; the computed summary is "
    "still printed and the other outputs written), 5 stopped by SIGTERM/SIGINT, 6 empty window "
    "(nothing scored), 7 run_timeout_seconds passed."
)

__all__ = ["EXIT_CODES_HELP", "EXIT_EMPTY", "EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_OUTPUT", "EXIT_TIMEOUT",
           "EXIT_USAGE"]
