"""`python -m sparkml_ext.jvm`: build (or find) the staging encoder's jar for this pyspark; exit 1 where none builds."""

from __future__ import annotations

import logging
import sys

from sparkml_ext.jvm import build_jar, find_javac


def main() -> int:
    """Build the jar into the cache and print its path."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    jar = build_jar()
    if jar is None:
        why = "no javac (install a JDK)" if find_javac() is None else "see the warning above"
        print(f"the JVM staging encoder was not built ({why}); staging encodes in Python", file=sys.stderr)
        return 1
    print(jar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
