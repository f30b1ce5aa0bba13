"""``python -m advseg ...``: the same as the ``advseg`` command."""

from advseg.cli.main import main

if __name__ == "__main__":
    main()
