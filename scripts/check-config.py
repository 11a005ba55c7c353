#!/usr/bin/env python3
"""Checks the Workers' configs before they are built or deployed, for the mistakes that would
destroy data: the consumer's VERIFY_DB (the scratch database every verification empties) bound to
the metadata database or to a database it backs up, by database id or by name.

    python3 scripts/check-config.py [CONSUMER_CONFIG]      (default consumer/wrangler.toml)

Exits 1 naming the clash. The consumer checks the same at run time (the scratch marker), so a
binding changed after deployment is refused too.
"""

import sys
import tomllib
from pathlib import Path


def clashes(config: dict) -> list[str]:
    databases = {d["binding"]: d for d in config.get("d1_databases", [])}
    scratch = databases.get("VERIFY_DB")
    if scratch is None:
        return []
    protected = {"META": "the metadata database"}
    for name, entry in config.get("vars", {}).get("DATABASES", {}).items():
        binding = entry if isinstance(entry, str) else entry.get("binding")
        protected[binding] = f"the source database {name!r}"
    problems = []
    for binding, what in protected.items():
        other = databases.get(binding)
        if other is None:
            continue
        for field in ("database_id", "database_name"):
            if other.get(field) and other.get(field) == scratch.get(field):
                problems.append(f"VERIFY_DB has the same {field} ({scratch[field]}) as {binding}, {what}: "
                                f"every verification would empty it. Bind an empty D1 database used for nothing else.")
    return problems


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "consumer/wrangler.toml")
    with open(path, "rb") as f:
        problems = clashes(tomllib.load(f))
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
