"""The ``bpnet`` command and ``python -m bpnet``: import the CLI, then run it."""

import sys


def main():
    try:
        from .cli import main as run_cli  # click and the commands: about 0.1 s
    except KeyboardInterrupt:  # Ctrl-C before the CLI's own handler is in place
        sys.stderr.write("Stopped.\n")
        sys.exit(130)
    run_cli()


if __name__ == "__main__":
    main()
