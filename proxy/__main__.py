"""``python -m proxy``: the same as the ``jetty-proxy`` command."""

from proxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
