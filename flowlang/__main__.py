"""`python -m flowlang` runs the `flowc` command line."""

from flowlang.cli import main

if __name__ == "__main__":
    main()
