"""``python -m diffexp.dashboard``: the W&B workspace and report of diffexp runs (``diffexp.tracking.dashboard``)."""

from diffexp.tracking.dashboard import main

if __name__ == "__main__":
    main()
