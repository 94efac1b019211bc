#!/usr/bin/env python3
"""Container health check: exit 0 when every URL given returns 200, 1 otherwise.

    echoseen-healthcheck http://127.0.0.1:9464/healthz http://127.0.0.1:9464/readyz

The image has no curl; the daemons' /healthz and /readyz return JSON with the
reason, which is printed so `docker inspect` shows why a check failed.
"""

import sys
import urllib.error
import urllib.request


def check(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read(500).decode(errors='replace')}")
    except OSError as exc:
        print(f"{url}: {exc}")
    return False


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: echoseen-healthcheck URL [URL ...]")
    results = [check(url) for url in sys.argv[1:]]
    sys.exit(0 if all(results) else 1)
