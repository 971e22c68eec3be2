"""``python -m diffexp.samplers [--posterior]``: the samplers of conf/sampler/, comma-separated (for make)."""

import sys

from diffexp.samplers.registry import available

if __name__ == "__main__":
    specs = available()
    print(",".join(n for n, s in specs.items() if s.measurement or "--posterior" not in sys.argv[1:]))
