"""``python -m hoigen``."""

from hoigen.cli import main

if __name__ == "__main__":
    main()
